"""load_dataset for every source: shapes, value ranges, labels, splits, options and clear errors."""
import gzip
import json
import os
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from imm_ext.data import (DATASET_NAMES, SD_VAE_FT_EMA_MEAN, SD_VAE_FT_EMA_STD, ArrayDataset, BatchStream,
                          load_dataset, read_idx, toy2d)

HAS_FASHION = os.path.isfile("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


def rgb_images(n, size=(6, 5), seed=0):
    """n random uint8 RGB images of size (width, height)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8) for _ in range(n)]


def as_unit(pixels):
    return torch.from_numpy(pixels.astype(np.float32)).permute(2, 0, 1) / 127.5 - 1


def check_items(dataset, shape):
    x, label = dataset[0]
    assert x.dtype == torch.float32 and tuple(x.shape) == shape == dataset.sample_shape
    assert isinstance(label, int)
    return x, label


def test_toys_have_fixed_seeded_samples_and_independent_splits():
    train = load_dataset("8gaussians", n=500, seed=1)
    assert isinstance(train, ArrayDataset) and len(train) == 500 and train.num_classes == 0
    check_items(train, (2,))
    assert train[0][1] == -1
    assert torch.equal(train.tensors()[0], load_dataset("8gaussians", n=500, seed=1).tensors()[0])
    assert not torch.equal(train.tensors()[0], load_dataset("8gaussians", n=500, seed=2).tensors()[0])
    assert not torch.equal(train.tensors()[0], load_dataset("8gaussians", split="test", n=500, seed=1).tensors()[0])
    assert load_dataset("pinwheel", n=10, std=None).tensors()[0].abs().max() < 5
    for name in toy2d.NAMES:
        assert name in DATASET_NAMES


def test_digits_split_is_fixed_disjoint_and_complete():
    train, test, everything = (load_dataset("digits", split=s) for s in ("train", "test", "all"))
    assert (len(train), len(test), len(everything)) == (1497, 300, 1797)
    assert train.num_classes == 10 and train.name == "digits"
    x, _ = check_items(train, (1, 8, 8))
    assert train.tensors()[0].min() == -1 and train.tensors()[0].max() == 1  # 0..16 -> [-1, 1]
    rows = lambda d: {tuple(r) for r in d.tensors()[0].flatten(1).tolist()}
    assert len(rows(train) & rows(test)) < 10  # only exact duplicate images can appear in both
    assert torch.bincount(test.tensors()[1], minlength=10).min() >= 20


@pytest.mark.skipif(not HAS_FASHION, reason="the Debian package dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_the_debian_package():
    test = load_dataset("fashion-mnist", split="test")
    assert len(test) == 10_000 and test.num_classes == 10
    check_items(test, (1, 28, 28))
    padded = load_dataset("fashion-mnist", split="test", pad=True)
    assert padded.sample_shape == (1, 32, 32)
    assert torch.equal(padded.tensors()[0][:, :, 2:30, 2:30], test.tensors()[0])
    assert (padded.tensors()[0][:, :, :2] == -1).all()


def write_idx_gz(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    with gzip.open(path, "wb") as file:
        file.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_from_a_given_folder_and_the_idx_parser(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    write_idx_gz(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx_gz(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(7) % 10)
    data = load_dataset("fashion-mnist", path=tmp_path, split="test")
    assert torch.allclose(data.tensors()[0][:, 0], torch.from_numpy(images).float() / 127.5 - 1, atol=1e-6)
    assert data.tensors()[1].tolist() == list(range(7))
    with pytest.raises(ValueError, match="magic"):
        read_idx(b"\x01\x00\x08\x01")
    with pytest.raises(ValueError, match="data bytes"):
        read_idx(bytes([0, 0, 8, 1]) + np.array([5], dtype=">u4").tobytes() + b"\x00" * 4)


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist.*path="):
        load_dataset("fashion-mnist", path=tmp_path / "nowhere")


def test_image_folder_with_class_subfolders(tmp_path):
    pictures = rgb_images(5)
    for i, pixels in enumerate(pictures):
        folder = tmp_path / ("cat" if i < 2 else "dog") / ("nested" if i == 4 else "")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    data = load_dataset("folder", path=tmp_path)
    assert len(data) == 5 and data.num_classes == 2 and data.class_names == ["cat", "dog"]
    x, label = check_items(data, (3, 5, 6))
    assert label == 0 and torch.allclose(x, as_unit(pictures[0]), atol=1e-6)
    assert [data[i][1] for i in range(5)] == [0, 0, 1, 1, 1]
    grey = load_dataset("folder", path=tmp_path, channels=1, resolution=2)
    check_items(grey, (1, 2, 2))
    x, labels = next(BatchStream(data, 4, seed=0))  # lazy datasets are stacked item by item
    assert x.shape == (4, 3, 5, 6) and labels.dtype == torch.int64


def test_flat_image_folder_is_unlabelled_and_checks_sizes(tmp_path):
    for i, pixels in enumerate(rgb_images(3)):
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
    Image.fromarray(rgb_images(1, size=(5, 5))[0]).save(tmp_path / "odd.png")
    data = load_dataset("folder", path=tmp_path)
    assert data.num_classes == 0 and data[0][1] == -1
    odd = [i for i, e in enumerate(data.entries) if e.endswith("odd.png")][0]
    with pytest.raises(ValueError, match="resolution="):
        data[odd]
    data = load_dataset("folder", path=tmp_path, resolution=3)  # centre crop to a square, then resize
    assert all(data[i][0].shape == (3, 3, 3) for i in range(len(data)))
    (tmp_path / "sub").mkdir()
    Image.fromarray(rgb_images(1)[0]).save(tmp_path / "sub" / "x.png")
    with pytest.raises(ValueError, match="both images and class subfolders"):
        load_dataset("folder", path=tmp_path)


def test_edm_style_zip_with_labels(tmp_path):
    pictures = rgb_images(3)
    path = tmp_path / "data.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for i, pixels in enumerate(pictures):
            target = tmp_path / f"{i}.png"
            Image.fromarray(pixels).save(target)
            archive.write(target, f"00000/img{i:08d}.png")
        archive.writestr("dataset.json", json.dumps({"labels": [[f"00000/img{i:08d}.png", 2 - i] for i in range(3)]}))
    data = load_dataset("zip", path=path)
    assert len(data) == 3 and data.num_classes == 3
    x, label = check_items(data, (3, 5, 6))
    assert label == 2 and torch.allclose(x, as_unit(pictures[0]), atol=1e-6)
    import pickle
    assert torch.equal(pickle.loads(pickle.dumps(data))[1][0], data[1][0])  # DataLoader workers reopen it
    unlabelled = tmp_path / "plain.zip"
    with zipfile.ZipFile(unlabelled, "w") as archive:
        archive.write(tmp_path / "0.png", "a.png")
        archive.writestr("dataset.json", json.dumps({"labels": None}))
    assert load_dataset("zip", path=unlabelled).num_classes == 0
    partial = tmp_path / "partial.zip"
    with zipfile.ZipFile(partial, "w") as archive:
        archive.write(tmp_path / "0.png", "a.png")
        archive.write(tmp_path / "1.png", "b.png")
        archive.writestr("dataset.json", json.dumps({"labels": [["a.png", 0]]}))
    with pytest.raises(ValueError, match="no label"):
        load_dataset("zip", path=partial)
    (tmp_path / "fake.zip").write_text("not a zip")
    with pytest.raises(ValueError, match="not a zip"):
        load_dataset("zip", path=tmp_path / "fake.zip")


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_uint8_arrays_in_either_layout(tmp_path, layout):
    pixels = np.stack(rgb_images(4))  # NHWC
    stored = pixels if layout == "NHWC" else pixels.transpose(0, 3, 1, 2)
    np.savez(tmp_path / "a.npz", images=stored, labels=np.array([3, 1, 0, 3]))
    data = load_dataset("npz", path=tmp_path / "a.npz")
    assert data.num_classes == 4 and data.tensors()[1].tolist() == [3, 1, 0, 3]
    x, _ = check_items(data, (3, 5, 6))
    assert torch.allclose(x, as_unit(pixels[0]), atol=1e-6)
    np.save(tmp_path / "a.npy", stored)
    assert torch.equal(load_dataset("npy", path=tmp_path / "a.npy").tensors()[0], data.tensors()[0])


def test_float_and_grey_arrays_and_their_errors(tmp_path):
    np.save(tmp_path / "grey.npy", np.linspace(0, 1, 2 * 5 * 5, dtype=np.float32).reshape(2, 5, 5))
    with pytest.raises(ValueError, match="value_range"):
        load_dataset("npy", path=tmp_path / "grey.npy", value_range=(0.0, 0.5))
    data = load_dataset("npy", path=tmp_path / "grey.npy", value_range=(0, 1))
    assert data.sample_shape == (1, 5, 5) and data.tensors()[0].min() == -1 and data.tensors()[0].max() == 1
    np.save(tmp_path / "ambiguous.npy", np.zeros((2, 3, 3, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="layout="):
        load_dataset("npy", path=tmp_path / "ambiguous.npy")
    assert load_dataset("npy", path=tmp_path / "ambiguous.npy", layout="NHWC").sample_shape == (3, 3, 3)
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 4, 4), np.uint8), b=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="key="):
        load_dataset("npz", path=tmp_path / "two.npz")
    assert len(load_dataset("npz", path=tmp_path / "two.npz", key="b")) == 2
    np.savez(tmp_path / "badlabels.npz", x=np.zeros((2, 4, 4), np.uint8), labels=np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="labels must be integers"):
        load_dataset("npz", path=tmp_path / "badlabels.npz")


def test_latents_are_normalised_per_channel(tmp_path):
    mean, std = torch.tensor(SD_VAE_FT_EMA_MEAN), torch.tensor(SD_VAE_FT_EMA_STD)
    raw = mean.view(1, 4, 1, 1) + std.view(1, 4, 1, 1) * torch.randn(64, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    np.savez(tmp_path / "lat.npz", latents=raw.numpy(), labels=np.arange(64) % 7)
    data = load_dataset("latents", path=tmp_path / "lat.npz")
    x = data.tensors()[0]
    assert data.sample_shape == (4, 3, 3) and data.num_classes == 7
    assert torch.allclose(x, (raw - mean.view(1, 4, 1, 1)) / std.view(1, 4, 1, 1) * 0.5, atol=1e-6)
    assert x.std().item() == pytest.approx(0.5, rel=0.1)
    with pytest.raises(ValueError, match="channel_mean"):
        load_dataset("latents", path=tmp_path / "lat.npz", channel_mean=(0.0, 0.0))


def test_latents_drawn_from_a_stored_posterior(tmp_path):
    posterior_mean = torch.zeros(50, 4, 2, 2) + torch.tensor(SD_VAE_FT_EMA_MEAN).view(1, 4, 1, 1)
    posterior_std = torch.ones(50, 4, 2, 2) * torch.tensor(SD_VAE_FT_EMA_STD).view(1, 4, 1, 1)
    np.save(tmp_path / "posterior.npy", torch.cat([posterior_mean, posterior_std], 1).numpy())
    data = load_dataset("latents", path=tmp_path / "posterior.npy", stored="mean_std")
    assert data.sample_shape == (4, 2, 2) and data.num_classes == 0 and not hasattr(data, "tensors")
    assert not torch.equal(data[0][0], data[0][0])  # a fresh draw at every use
    stream = lambda: BatchStream(data, 200, seed=3)
    first, again = next(stream())[0], next(stream())[0]
    assert torch.equal(first, again)  # but reproducible through BatchStream
    assert first.mean().abs() < 0.05 and first.std().item() == pytest.approx(0.5, rel=0.05)
    with pytest.raises(ValueError, match="even channel count"):
        np.save(tmp_path / "odd.npy", np.zeros((2, 3, 2, 2), np.float32))
        load_dataset("latents", path=tmp_path / "odd.npy", stored="mean_std", channel_mean=[0], channel_std=[1])


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="name must be one of"):
        load_dataset("cifar10")
    with pytest.raises(ValueError, match="split"):
        load_dataset("digits", split="validation")
    with pytest.raises(TypeError, match="unknown option.*'pad'"):
        load_dataset("digits", pad=True)
    with pytest.raises(TypeError, match="unknown option.*'bogus'.*'n', 'seed', 'std'"):
        load_dataset("moons", bogus=1)
    with pytest.raises(ValueError, match="takes no path"):
        load_dataset("moons", path=tmp_path)
    with pytest.raises(ValueError, match="pass path="):
        load_dataset("folder")
    with pytest.raises(ValueError, match="split applies to the built-in"):
        load_dataset("folder", path=tmp_path, split="test")
    with pytest.raises(FileNotFoundError):
        load_dataset("npz", path=tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="no images"):
        load_dataset("folder", path=tmp_path)
    with pytest.raises(ValueError, match="channels"):
        load_dataset("folder", path=tmp_path, channels=2)
    with pytest.raises(ValueError, match="seed"):
        load_dataset("moons", seed=-1)
    with pytest.raises(TypeError, match="path"):
        load_dataset("npz", path=3)
