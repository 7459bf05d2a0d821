"""`imm-ext prepare` / `prepare_dataset`: tiny CIFAR-10 archives in both official formats, built here,
an image folder and a zip become the training zip losslessly and deterministically; hostile or broken
inputs get errors naming the file; the prepared zip trains and samples."""
import io
import json
import os
import pickle
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from imm_ext.cli import main
from imm_ext.data import ImageZipDataset
from imm_ext.data.cifar10 import CLASS_NAMES, read_cifar10
from imm_ext.data.prepare import adm_center_crop, prepare_dataset
from imm_ext.restricted_pickle import UnsafePickleError

BATCH = 3  # images per official batch file in these tiny archives


def cifar_arrays(seed=0):
    rng = np.random.default_rng(seed)
    batches = {f"data_batch_{i}": (rng.integers(0, 256, (BATCH, 3072), dtype=np.uint8),
                                   rng.integers(0, 10, BATCH).tolist()) for i in range(1, 6)}
    batches["test_batch"] = (rng.integers(0, 256, (2, 3072), dtype=np.uint8), [9, 0])
    return batches


def _tar(path, files):
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def binary_archive(path, batches):
    files = {f"cifar-10-batches-bin/{name}.bin": b"".join(bytes([label]) + row.tobytes() for row, label in zip(*batch))
             for name, batch in batches.items()}
    files["cifar-10-batches-bin/batches.meta.txt"] = ("\n".join(CLASS_NAMES) + "\n\n").encode()
    return _tar(path, files)


def python_archive(path, batches, poison=None):
    files = {f"cifar-10-batches-py/{name}": pickle.dumps({b"batch_label": b"x", b"labels": labels, b"data": data,
                                                         b"filenames": [b"a.png"] * len(labels)}, protocol=2)
             for name, (data, labels) in batches.items()}
    files["cifar-10-batches-py/batches.meta"] = pickle.dumps({b"label_names": [n.encode() for n in CLASS_NAMES]})
    if poison is not None:
        files["cifar-10-batches-py/data_batch_1"] = poison
    return _tar(path, files)


def expected(batches, split="train"):
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images = np.concatenate([batches[n][0] for n in names]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, np.concatenate([batches[n][1] for n in names])


def zip_pixels(path):
    dataset = ImageZipDataset(str(path))
    pixels = np.stack([np.rint((dataset[i][0].numpy() + 1) * 127.5).astype(np.uint8).transpose(1, 2, 0)
                       for i in range(len(dataset))])
    return pixels, dataset.labels.numpy()


@pytest.mark.parametrize("split", ["train", "test"])
def test_both_cifar_formats_read_the_same_images_and_labels(tmp_path, split):
    batches = cifar_arrays()
    images, labels = expected(batches, split)
    for archive in (binary_archive(tmp_path / "bin.tar.gz", batches), python_archive(tmp_path / "py.tar.gz", batches)):
        read, read_labels, classes = read_cifar10(str(archive), split)
        assert np.array_equal(read, images) and np.array_equal(read_labels, labels)
        assert classes == list(CLASS_NAMES)


def test_prepare_is_lossless_and_deterministic_in_both_formats(tmp_path):
    batches = cifar_arrays()
    images, labels = expected(batches)
    summaries = [prepare_dataset(binary_archive(tmp_path / "bin.tar.gz", batches), tmp_path / "a.zip",
                                 show_progress=False),
                 prepare_dataset(python_archive(tmp_path / "py.tar.gz", batches), tmp_path / "b.zip",
                                 show_progress=False),
                 prepare_dataset(tmp_path / "bin.tar.gz", tmp_path / "c.zip", show_progress=False)]
    assert len({s["sha256"] for s in summaries}) == 1  # same content, same bytes, whatever the format
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "c.zip").read_bytes()
    assert summaries[0]["images"] == 5 * BATCH and summaries[0]["shape"] == [3, 32, 32]
    pixels, read_labels = zip_pixels(tmp_path / "a.zip")
    assert np.array_equal(pixels, images) and np.array_equal(read_labels, labels)
    with zipfile.ZipFile(tmp_path / "a.zip") as archive:
        document = json.loads(archive.read("dataset.json"))
        assert document["class_names"] == list(CLASS_NAMES)
        assert document["labels"][0] == ["00000/img00000000.png", int(labels[0])]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    archive = python_archive(tmp_path / "py.tar.gz", cifar_arrays(), poison=pickle.dumps({b"data": _RunsCode()}))
    with pytest.raises(UnsafePickleError, match=r"data_batch_1 refers to (posix|os)\.system, which is not allowed"):
        prepare_dataset(archive, tmp_path / "out.zip", show_progress=False)
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out.zip").exists()


@pytest.mark.parametrize("damage, message", [
    ("truncated", "not a readable CIFAR-10 tar archive"),
    ("short-record", r"data_batch_2\.bin: 3000 bytes is not a whole number of 3073-byte"),
    ("missing-batch", "has no data_batch_3"),
    ("bad-label", r"labels must lie in 0\.\.9"),
    ("not-an-array", r"b'data' must be a uint8 array"),
])
def test_broken_archives_name_what_is_wrong(tmp_path, damage, message):
    batches = cifar_arrays()
    if damage == "truncated":
        path = binary_archive(tmp_path / "a.tar.gz", batches)
        path.write_bytes(path.read_bytes()[:200])
    elif damage in ("short-record", "missing-batch", "bad-label"):
        files = {f"{n}.bin": b"".join(bytes([l]) + r.tobytes() for r, l in zip(*b)) for n, b in batches.items()}
        if damage == "short-record":
            files["data_batch_2.bin"] = b"\0" * 3000
        elif damage == "missing-batch":
            del files["data_batch_3.bin"]
        else:
            files["data_batch_4.bin"] = bytes([12]) + files["data_batch_4.bin"][1:]
        path = _tar(tmp_path / "a.tar.gz", files)
    else:
        path = python_archive(tmp_path / "a.tar.gz", batches, poison=pickle.dumps({b"data": [1, 2], b"labels": [1]}))
    with pytest.raises(ValueError, match=message):
        prepare_dataset(path, tmp_path / "out.zip", show_progress=False)
    assert not (tmp_path / "out.zip").exists()


def _save(path, size, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_an_image_folder_becomes_a_labelled_zip_and_mixed_sizes_need_a_resolution(tmp_path):
    _save(tmp_path / "folder" / "cat" / "a.png", (40, 30), (255, 0, 0))
    _save(tmp_path / "folder" / "cat" / "b.jpg", (40, 30), (0, 255, 0))
    _save(tmp_path / "folder" / "dog" / "c.png", (50, 20), (0, 0, 255))
    with pytest.raises(ValueError, match=r"dog/c\.png is 50x20, unlike the first image's 40x30; pass a resolution"):
        prepare_dataset(tmp_path / "folder", tmp_path / "out.zip", show_progress=False)
    summary = prepare_dataset(tmp_path / "folder", tmp_path / "out.zip", resolution=16, show_progress=False)
    in_parallel = prepare_dataset(tmp_path / "folder", tmp_path / "parallel.zip", resolution=16, workers=2,
                                  show_progress=False)
    assert in_parallel["sha256"] == summary["sha256"]  # the same bytes whatever the number of workers
    assert summary["images"] == 3 and summary["shape"] == [3, 16, 16] and summary["class_names"] == ["cat", "dog"]
    pixels, labels = zip_pixels(tmp_path / "out.zip")
    assert labels.tolist() == [0, 0, 1] and pixels[0, 8, 8].tolist() == [255, 0, 0]
    # a zip is a source too: the same images again, the same bytes
    again = prepare_dataset(tmp_path / "out.zip", tmp_path / "again.zip", show_progress=False)
    assert np.array_equal(zip_pixels(tmp_path / "again.zip")[0], pixels) and again["class_names"] is None


def test_the_adm_crop_keeps_the_centre(tmp_path):
    """A 301x120 picture, dark left of its centre and bright right of it: after the crop to 24 (one
    halving, a bicubic resize, the centre square) the boundary is still in the middle."""
    picture = np.zeros((120, 301), dtype=np.uint8)
    picture[:, 151:] = 255
    cropped = np.asarray(adm_center_crop(Image.fromarray(picture), 24), dtype=np.int64)
    assert cropped.shape == (24, 24)
    assert (cropped[:, :10] < 40).all() and (cropped[:, 14:] > 215).all()


def test_the_command_prepares_and_the_zip_trains_and_samples(tmp_path, capsys):
    archive = binary_archive(tmp_path / "cifar-10-binary.tar.gz", cifar_arrays())
    assert main(["prepare", str(archive), str(tmp_path / "cifar.zip"), "--quiet"]) == 0
    assert "15 images 3x32x32 with labels, 10 classes" in capsys.readouterr().out
    assert main(["prepare", str(tmp_path / "missing.tar.gz"), str(tmp_path / "x.zip")]) == 2
    assert "missing.tar.gz" in capsys.readouterr().err
    overrides = [f"data.path={tmp_path / 'cifar.zip'}", f"log.root={tmp_path}", "train.steps=2",
                 "train.batch_size=8", "model.kind=dit", "model.options={patch_size: 8, hidden_size: 16, depth: 1, heads: 2}",
                 "train.precision=fp32", "log.progress=false", "log.tensorboard=false", "eval.num_samples=8", "eval.feature_net=null",
                 "log.sample_every=0", "eval.steps=[1]"]
    assert main(["train", "--preset", "cifar10", "--name", "tiny", *overrides]) == 0, capsys.readouterr().err
    checkpoint = sorted((tmp_path / "tiny" / "checkpoints").glob("step-*.pt"))[-1]
    assert main(["sample", "--ckpt", str(checkpoint), "--steps", "1,2", "--n", "4",
                 "--out", str(tmp_path / "s.npz")]) == 0
    with np.load(tmp_path / "s.npz") as samples:
        assert samples["samples_2step"].shape == (4, 3, 32, 32)
