"""Standard FID: streamed statistics equal numpy's mean and covariance; reference files in the EDM
layout round-trip and published layouts (extra keys) are read, broken ones named; with the real
Inception network, `imm-ext fid-ref` of a prepared zip and the FID of the same images against it is ~0,
and `imm-ext eval --fid --ref` scores a trained model's samples."""
import json

import numpy as np
import pytest
import torch

from imm_ext.cli import main
from imm_ext.eval.fid_reference import FeatureStatistics, fid_from_statistics, load_reference, save_reference
from imm_ext.eval.frechet import frechet_distance


def test_streamed_statistics_equal_numpy_over_uneven_batches():
    features = np.random.default_rng(0).normal(3.0, 2.0, (103, 7))
    statistics = FeatureStatistics()
    for start, stop in ((0, 1), (1, 40), (40, 41), (41, 103)):
        statistics.add(torch.from_numpy(features[start:stop]))
    mu, sigma = statistics.mean_and_covariance()
    np.testing.assert_allclose(mu, features.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(features, rowvar=False), rtol=1e-10, atol=1e-12)
    other = np.random.default_rng(1).normal(0.0, 1.0, (50, 7))
    assert fid_from_statistics(mu, sigma, other.mean(0), np.cov(other, rowvar=False)) == pytest.approx(
        frechet_distance(torch.from_numpy(features), torch.from_numpy(other)), rel=1e-9)
    with pytest.raises(ValueError, match="NaN or inf"):
        statistics.add(torch.full((2, 7), float("nan")))


def test_reference_files_round_trip_and_published_layouts_are_read(tmp_path):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(30, 5))
    mu, sigma = features.mean(0), np.cov(features, rowvar=False)
    path = save_reference(tmp_path / "ref.npz", mu, sigma, count=30)
    with np.load(path) as archive:
        assert set(archive.files) == {"mu", "sigma", "count"} and archive["sigma"].dtype == np.float64
    read_mu, read_sigma = load_reference(path)
    assert np.array_equal(read_mu, mu) and np.array_equal(read_sigma, sigma)
    # ADM's reference batches: images and spatial statistics beside mu and sigma
    np.savez(tmp_path / "adm.npz", arr_0=np.zeros((2, 4, 4, 3), np.uint8), mu=mu, sigma=sigma, mu_s=mu[:2],
             sigma_s=sigma[:2, :2])
    assert np.array_equal(load_reference(tmp_path / "adm.npz")[1], sigma)


@pytest.mark.parametrize("content, message", [
    ({"mean": np.zeros(3)}, "has no 'mu' and 'sigma'"),
    ({"mu": np.zeros(3), "sigma": np.zeros((3, 2))}, r"mu must be \(D,\) and sigma \(D, D\)"),
    ({"mu": np.zeros(2), "sigma": np.array([[1.0, 2.0], [0.0, 1.0]])}, "not symmetric"),
    ({"mu": np.array([np.nan, 0.0]), "sigma": np.eye(2)}, "must be finite"),
    (b"not a zip", "not a readable .npz"),
])
def test_broken_reference_files_are_named(tmp_path, content, message):
    path = tmp_path / "ref.npz"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        np.savez(path, **content)
    with pytest.raises(ValueError, match=message) as error:
        load_reference(path)
    assert "ref.npz" in str(error.value)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_reference(tmp_path / "missing.npz")


def test_fid_of_a_set_against_its_own_reference_is_zero_and_a_model_is_scored(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(8):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{index:02d}.png")
    assert main(["prepare", str(folder), str(tmp_path / "set.zip"), "--quiet"]) == 0
    assert main(["fid-ref", str(tmp_path / "set.zip"), str(tmp_path / "ref.npz"), "--batch-size", "5"]) == 0
    mu, sigma = load_reference(tmp_path / "ref.npz")
    assert mu.shape == (2048,) and sigma.shape == (2048, 2048)
    assert main(["fid-ref", str(folder), str(tmp_path / "again.npz")]) == 0  # the folder itself: the same images
    assert fid_from_statistics(*load_reference(tmp_path / "again.npz"), mu, sigma) < 1e-6 * np.trace(sigma)

    overrides = [f"data.path={tmp_path / 'set.zip'}", f"log.root={tmp_path}", "train.steps=1", "train.batch_size=4",
                 "model.kind=dit", "model.options={patch_size: 8, hidden_size: 16, depth: 1, heads: 2}",
                 "log.progress=false", "log.tensorboard=false", "eval.num_samples=4", "eval.feature_net=null",
                 "log.sample_every=0", "eval.steps=[1]"]
    assert main(["train", "--preset", "cifar10", "--name", "tiny", *overrides]) == 0
    checkpoint = sorted((tmp_path / "tiny" / "checkpoints").glob("step-*.pt"))[-1]
    capsys.readouterr()
    assert main(["eval", "--ckpt", str(checkpoint), "--fid", "--ref", str(tmp_path / "ref.npz"), "--n", "4",
                 "--steps", "1,2", "--batch-size", "4", "--out", str(tmp_path / "fid.json")]) == 0
    report = json.loads((tmp_path / "fid.json").read_text())
    assert set(report["fid_by_steps"]) == {"1", "2"} and report["num_samples"] == 4 and report["seed"] == 0
    assert all(value > 0 for value in report["fid_by_steps"].values())  # untrained samples are not the set
    assert main(["eval", "--ckpt", str(checkpoint), "--fid"]) == 2
    assert "--fid and --ref go together" in capsys.readouterr().err
