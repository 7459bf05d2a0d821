"""The latent workflow on tiny sizes with a randomly initialised AutoencoderKL built from a config (no
weights downloaded): prepare images, encode them to posterior mean and std (batched, resumable), train
on the latents, sample decoded images, and score them in pixel space with the standard FID."""
import json

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image

from imm_ext.cli import main
from imm_ext.data import load_dataset
from imm_ext.data.vae import decode_latents, encode_dataset, load_vae


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
                                  layers_per_block=1, block_out_channels=(8, 16), sample_size=16,
                                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    path = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def image_zip(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for index in range(10):
        folder = root / "folder" / ("even" if index % 2 == 0 else "odd")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    assert main(["prepare", str(root / "folder"), str(root / "images.zip"), "--quiet"]) == 0
    return root / "images.zip"


def test_encode_stores_the_posterior_mean_and_std_with_labels(tmp_path, vae_dir, image_zip):
    assert main(["encode", str(image_zip), str(tmp_path / "z.npz"), "--vae", str(vae_dir), "--batch-size", "3",
                 "--workers", "2", "--quiet"]) == 0
    with np.load(tmp_path / "z.npz") as archive:
        latents, labels = archive["latents"], archive["labels"]
    assert latents.shape == (10, 8, 8, 8) and labels.tolist() == [0] * 5 + [1] * 5
    images = load_dataset("zip", path=image_zip)
    vae = load_vae(vae_dir)
    posterior = vae.encode(torch.stack([images[i][0] for i in range(10)])).latent_dist
    torch.testing.assert_close(torch.from_numpy(latents), torch.cat([posterior.mean, posterior.std], 1))
    record = json.loads((tmp_path / "z.json").read_text())
    assert record["vae"] == str(vae_dir) and record["stored"] == "mean_std" and record["images"] == 10
    assert not (tmp_path / "z.npz.partial").exists()


def test_an_interrupted_encode_continues_where_it_stopped(tmp_path, vae_dir, image_zip):
    images, vae = load_dataset("zip", path=image_zip), load_vae(vae_dir)

    class Interrupted(Exception):
        pass

    class FailsAtSeven(torch.utils.data.Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, index):
            if index == 7:
                raise Interrupted
            return images[index]

    with pytest.raises(Interrupted):
        encode_dataset(FailsAtSeven(), tmp_path / "z.npz", vae, batch_size=3, vae_name="v", source="s",
                       show_progress=False)
    state = json.loads((tmp_path / "z.npz.partial" / "progress.json").read_text())
    assert state["done"] == 6 and not (tmp_path / "z.npz").exists()
    with pytest.raises(ValueError, match="an interrupted encode of another source"):
        encode_dataset(images, tmp_path / "z.npz", vae, batch_size=3, vae_name="another", source="s",
                       show_progress=False)
    encode_dataset(images, tmp_path / "z.npz", vae, batch_size=3, vae_name="v", source="s", show_progress=False)
    encode_dataset(images, tmp_path / "straight.npz", vae, batch_size=5, vae_name="v", source="s", show_progress=False)
    with np.load(tmp_path / "z.npz") as resumed, np.load(tmp_path / "straight.npz") as straight:
        torch.testing.assert_close(torch.from_numpy(resumed["latents"]), torch.from_numpy(straight["latents"]))


def test_decoding_inverts_the_latent_normalisation(tmp_path, vae_dir, image_zip):
    vae = load_vae(vae_dir)
    encode_dataset(load_dataset("zip", path=image_zip), tmp_path / "z.npz", vae, show_progress=False)
    with np.load(tmp_path / "z.npz") as archive:
        means = archive["latents"][:, :4]
    np.savez(tmp_path / "means.npz", latents=means)
    normalised = load_dataset("latents", path=tmp_path / "means.npz").tensors()[0]
    torch.testing.assert_close(decode_latents(normalised, vae), vae.decode(torch.from_numpy(means)).sample.clamp(-1, 1),
                               rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="4 channel means"):
        decode_latents(torch.zeros(1, 3, 8, 8), vae)


def test_train_on_latents_then_sample_images_and_score_them_in_pixels(tmp_path, vae_dir, image_zip, capsys):
    assert main(["encode", str(image_zip), str(tmp_path / "z.npz"), "--vae", str(vae_dir), "--quiet"]) == 0
    overrides = [f"data.path={tmp_path / 'z.npz'}", f"log.root={tmp_path}", "train.steps=2", "train.batch_size=4",
                 "model.preset=null", "model.options={patch_size: 2, hidden_size: 16, depth: 1, heads: 2}",
                 "train.precision=fp32", "log.progress=false", "log.tensorboard=false", "eval.num_samples=4",
                 "log.sample_every=0", "eval.steps=[1]", "eval.batch_size=4"]
    assert main(["train", "--preset", "imagenet256-latent-S", "--name", "latent", *overrides]) == 0, \
        capsys.readouterr().err
    config = (tmp_path / "latent" / "config.yaml").read_text()
    assert f"vae: {vae_dir}" in config and "stored: mean_std" in config  # recorded from the encode
    checkpoint = sorted((tmp_path / "latent" / "checkpoints").glob("step-*.pt"))[-1]
    assert main(["sample", "--ckpt", str(checkpoint), "--n", "3", "--steps", "1", "--out", str(tmp_path / "s.npz")]) == 0
    with np.load(tmp_path / "s.npz") as samples:
        assert samples["samples_1step"].shape == (3, 16, 16, 3) and samples["samples_1step"].dtype == np.uint8
    assert main(["sample", "--ckpt", str(checkpoint), "--n", "3", "--steps", "1", "--latents",
                 "--out", str(tmp_path / "z-samples.npz")]) == 0
    with np.load(tmp_path / "z-samples.npz") as samples:
        assert samples["samples_1step"].shape == (3, 4, 8, 8)
    assert main(["sample", "--ckpt", str(checkpoint), "--n", "4", "--steps", "1", "--out", str(tmp_path / "g.png")]) == 0
    with Image.open(tmp_path / "g.png") as grid:
        assert grid.mode == "RGB" and grid.size[0] >= 32  # decoded 16x16 images, not latent channels
    assert main(["fid-ref", str(image_zip), str(tmp_path / "ref.npz")]) == 0
    assert main(["eval", "--ckpt", str(checkpoint), "--fid", "--ref", str(tmp_path / "ref.npz"), "--n", "4",
                 "--steps", "1", "--out", str(tmp_path / "fid.json")]) == 0
    assert json.loads((tmp_path / "fid.json").read_text())["fid_by_steps"]["1"] > 0
