"""Images to Stable Diffusion VAE latents and back, with diffusers' `AutoencoderKL` (the optional extra
`pip install "imm_ext[latent]"`).

- `load_vae(spec)`: a local directory or a hub id (e.g. "stabilityai/sd-vae-ft-ema"), resolved by
  diffusers on the user's machine; an AutoencoderKL instance passes through.
- `encode_dataset(dataset, out, vae)`: the posterior mean and std of every image, concatenated along
  channels, (N, 2C, h, w) float32: the stored="mean_std" layout of `latents.py` (raw encoder output, not
  multiplied by the VAE's scaling factor), with the labels, into `out` (.npz). Batched, on the VAE's
  device, resumable: rows go to a memory-mapped `out.partial/` with a count of the rows done, so an
  interrupted encode continues where it stopped; the .npz is written at the end and the folder removed.
  A JSON beside it records the VAE, the image count and the source.
- `decode_latents(z, vae, options)`: latents as the model generates them (normalised as `load_latents`
  does with the same data options) back to images in [-1, 1].
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

from ..progress import progress
from .latents import LATENT_SCALE, SD_VAE_FT_EMA_MEAN, SD_VAE_FT_EMA_STD

PathLike = Union[str, os.PathLike]


def load_vae(spec, device: Optional[torch.device] = None):
    """An AutoencoderKL in eval mode on `device`, from a directory, a hub id, or an instance."""
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise ImportError("latent encoding and decoding need diffusers: `pip install \"imm_ext[latent]\"` or "
                          "`pip install diffusers`") from None
    if isinstance(spec, AutoencoderKL):
        vae = spec
    elif isinstance(spec, (str, os.PathLike)):
        try:
            vae = AutoencoderKL.from_pretrained(os.fspath(spec), low_cpu_mem_usage=False)
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot load the VAE {os.fspath(spec)!r} (a local directory or a hub id such as "
                             f"stabilityai/sd-vae-ft-ema): {error}") from None
    else:
        raise TypeError(f"vae must be a path, a hub id or an AutoencoderKL; got {type(spec).__name__}")
    return vae.to(device or "cpu").eval().requires_grad_(False)


def _device_of(vae) -> torch.device:
    return next(vae.parameters()).device


@torch.no_grad()
def encode_dataset(dataset, out: PathLike, vae, *, batch_size: int = 64, workers: int = 0,
                   vae_name: Optional[str] = None, source: Optional[str] = None,
                   show_progress: bool = True) -> Dict[str, Any]:
    """Encode every image of `dataset` ((x in [-1, 1], label) items) to `out` (.npz), reading the images
    in `workers` DataLoader processes; see the module docstring. Returns the summary also written to
    `out` with the suffix .json."""
    out = Path(out)
    if out.suffix != ".npz":
        raise ValueError(f"out must be a .npz file; got {str(out)!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
    count, device = len(dataset), _device_of(vae)
    if count == 0:
        raise ValueError("the dataset holds no images")
    first = dataset[0][0]
    latent_shape = vae.encode(first[None].to(device)).latent_dist.mean.shape[1:]
    shape = (count, 2 * latent_shape[0], *latent_shape[1:])
    identity = {"source": source, "vae": vae_name, "images": count, "shape": list(shape)}
    partial = out.with_name(out.name + ".partial")
    state_file, rows_file, labels_file = partial / "progress.json", partial / "latents.npy", partial / "labels.npy"
    done = 0
    if state_file.is_file():
        state = json.loads(state_file.read_text())
        if {k: state.get(k) for k in identity} != identity:
            raise ValueError(f"{str(partial)!r} holds an interrupted encode of another source, VAE or size "
                             f"({ {k: state.get(k) for k in identity} }); remove it to start again")
        done = int(state["done"])
        rows = np.lib.format.open_memmap(rows_file, mode="r+")
        labels = np.lib.format.open_memmap(labels_file, mode="r+")
    else:
        partial.mkdir(parents=True, exist_ok=True)
        rows = np.lib.format.open_memmap(rows_file, mode="w+", dtype=np.float32, shape=shape)
        labels = np.lib.format.open_memmap(labels_file, mode="w+", dtype=np.int64, shape=(count,))
    remaining = torch.utils.data.Subset(dataset, range(done, count))
    loader = torch.utils.data.DataLoader(remaining, batch_size=batch_size, shuffle=False, num_workers=workers)
    batches = progress(loader, total=len(loader), enabled=show_progress, description="encode", unit="batch")
    for start, (images, batch_labels) in zip(range(done, count, batch_size), batches):
        stop = start + len(images)
        posterior = vae.encode(images.to(device)).latent_dist
        rows[start:stop] = torch.cat([posterior.mean, posterior.std], dim=1).float().cpu().numpy()
        labels[start:stop] = batch_labels.numpy()
        rows.flush()
        labels.flush()
        _write_json(state_file, {**identity, "done": stop})  # only after the rows are on disk
    labelled = bool((np.asarray(labels) >= 0).all())
    arrays = {"latents": np.asarray(rows), **({"labels": np.asarray(labels)} if labelled else {})}
    descriptor, temporary = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".npz", dir=out.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    summary = {**identity, "stored": "mean_std", "labelled": labelled,
               "scaling_factor": float(getattr(vae.config, "scaling_factor", 0.18215))}
    _write_json(out.with_suffix(".json"), summary)
    del rows, labels
    shutil.rmtree(partial)
    return summary


def _write_json(path: Path, document: dict) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(temporary, path)


@torch.no_grad()
def decode_latents(z: torch.Tensor, vae, options: Optional[Dict[str, Any]] = None) -> torch.Tensor:
    """Generated latents (N, C, h, w), normalised as `load_latents(**options)` normalises them, as float32
    CPU images in [-1, 1] decoded by `vae`."""
    options = options or {}
    channels = z.shape[1]
    mean = torch.tensor(options.get("channel_mean", SD_VAE_FT_EMA_MEAN), dtype=torch.float32)
    std = torch.tensor(options.get("channel_std", SD_VAE_FT_EMA_STD), dtype=torch.float32)
    if mean.shape != (channels,) or std.shape != (channels,):
        raise ValueError(f"the latents have {channels} channels but the data options give {len(mean)} channel "
                         f"means and {len(std)} stds")
    scale = float(options.get("scale", LATENT_SCALE))
    raw = z.float().cpu() * (std / scale).view(1, -1, 1, 1) + mean.view(1, -1, 1, 1)
    images = vae.decode(raw.to(_device_of(vae))).sample
    return images.float().clamp(-1, 1).cpu()
