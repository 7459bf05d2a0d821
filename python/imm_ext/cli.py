"""The `imm-ext` command: prepare data, train, sample and evaluate IMM models.

    imm-ext prepare SOURCE OUT.zip [--split train|test] [--resolution R] [--crop adm|center] [--channels 1|3]
    imm-ext encode SOURCE OUT.npz --vae DIR_OR_HUB_ID     # images to SD-VAE latents, resumable
    imm-ext fid-ref SOURCE REF.npz                        # Inception statistics of a zip, folder or array
    imm-ext train [--preset NAME] [--config FILE.yaml] [--resume auto|PATH] [--name RUN] [key=value ...]
    imm-ext sample --ckpt PATH [--steps 1,2,4,8] [--n 64] [--guidance W] [--out grid.png|samples.npz]
                   [--seed S] [--no-ema] [--latents]
    imm-ext eval --ckpt PATH [--steps 1,2,4,8] [--n N] [--seed S] [--no-ema] [--fid --ref REF.npz]
    imm-ext presets
    imm-ext doctor [--json] [--no-speed]

`imm-ext train` with no arguments is the default job: IMM on scikit-learn's 8x8 digits on the CPU,
writing runs/digits/. Overrides are dotted keys of the configuration (`imm-ext presets` and
`--print-config` show them), e.g. `method.kind=flow_matching` trains the flow-matching baseline on the
same network. Distributed: `torchrun --nproc_per_node N -m imm_ext.cli train ...`. `--ckpt` also takes
the IMM authors' released .pkl / .pt files (imm_ext.models.released).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from .train.checkpoint import CheckpointError, load_checkpoint, resolve_resume
from .train.config import ConfigError, TrainingConfig
from .train.config_io import apply_overrides, dump_config, load_config, parse_config
from .train.presets import DEFAULT_PRESET, TRAINING_PRESETS, get_preset


def _step_counts(text: str) -> List[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--steps must be comma-separated integers such as 1,2,4,8; got {text!r}")
    if not counts or any(count < 1 for count in counts):
        raise argparse.ArgumentTypeError(f"--steps must list positive integers; got {text!r}")
    return counts


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imm-ext", description="Inductive Moment Matching: train, sample, evaluate.")
    commands = parser.add_subparsers(dest="command")

    train = commands.add_parser("train", help="train a model (default: IMM on 8x8 digits, CPU)")
    train.add_argument("--preset", choices=sorted(TRAINING_PRESETS), help=f"named recipe (default {DEFAULT_PRESET})")
    train.add_argument("--config", type=Path, help="YAML file of settings (on top of the preset)")
    train.add_argument("--resume", help='"auto" (newest checkpoint of the run, if any) or a checkpoint path')
    train.add_argument("--name", help="run name: outputs go to <log.root>/<name>/")
    train.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.batch_size=512")

    sample = commands.add_parser("sample", help="draw samples from a checkpoint")
    sample.add_argument("--ckpt", required=True, type=Path)
    sample.add_argument("--steps", type=_step_counts, default=None, help="step counts (default: the method's)")
    sample.add_argument("--n", type=_positive_int, default=64, help="samples per step count")
    sample.add_argument("--guidance", type=float, default=None, help="classifier-free guidance weight")
    sample.add_argument("--out", type=Path, default=Path("samples.png"),
                        help=".png: one picture per step count (-Nstep suffix when several); .npz: arrays")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    sample.add_argument("--batch-size", type=_positive_int, default=500)
    sample.add_argument("--latents", action="store_true", help="a latent model: keep the raw latents, do not decode")

    evaluate = commands.add_parser("eval", help="metrics of a checkpoint's samples at several step counts")
    evaluate.add_argument("--ckpt", required=True, type=Path)
    evaluate.add_argument("--steps", type=_step_counts, default=None, help="step counts (default: eval.steps)")
    evaluate.add_argument("--n", type=_positive_int, default=None, help="samples (default: eval.num_samples)")
    evaluate.add_argument("--guidance", type=float, default=None)
    evaluate.add_argument("--seed", type=int, default=None)
    evaluate.add_argument("--no-ema", action="store_true")
    evaluate.add_argument("--out", type=Path, default=None, help="metrics JSON (default: next to the checkpoint's run)")
    evaluate.add_argument("--fid", action="store_true", help="standard FID against --ref (needs imm_ext[fid])")
    evaluate.add_argument("--ref", type=Path, help="reference statistics .npz (imm-ext fid-ref, or a published one)")
    evaluate.add_argument("--batch-size", type=_positive_int, default=None, help="samples per batch")

    encode = commands.add_parser("encode", help="images to SD-VAE latents (posterior mean and std) for training")
    encode.add_argument("source", type=Path, help="a prepared zip, an image folder, or an .npz/.npy of images")
    encode.add_argument("out", type=Path, help="the .npz to write (resumable: an interrupted encode continues)")
    encode.add_argument("--vae", required=True, help="a local directory or a hub id, e.g. stabilityai/sd-vae-ft-ema")
    encode.add_argument("--batch-size", type=_positive_int, default=64)
    encode.add_argument("--workers", type=int, default=0, help="DataLoader processes that read the images")
    encode.add_argument("--quiet", action="store_true", help="no progress bar")

    fid_ref = commands.add_parser("fid-ref", help="Inception reference statistics (mu, sigma) of a set of images")
    fid_ref.add_argument("source", type=Path, help="a prepared zip, an image folder, or an .npz/.npy of images")
    fid_ref.add_argument("out", type=Path, help="the .npz to write (EDM layout: mu, sigma)")
    fid_ref.add_argument("--batch-size", type=_positive_int, default=100)
    fid_ref.add_argument("--limit", type=_positive_int, default=None, help="the first N images only")

    prepare = commands.add_parser("prepare", help="images (CIFAR-10 archive, image folder, zip) into a training zip")
    prepare.add_argument("source", type=Path, help="cifar-10-{binary,python}.tar.gz (or extracted), a folder or a zip")
    prepare.add_argument("out", type=Path, help="the zip to write (EDM layout: PNGs and dataset.json)")
    prepare.add_argument("--split", default="train", help="CIFAR-10's train (50000) or test (10000) images")
    prepare.add_argument("--resolution", type=_positive_int, default=None, help="crop to a square and resize")
    prepare.add_argument("--crop", choices=["adm", "center"], default="adm",
                         help="adm: box-halve, bicubic, centre (the ADM ImageNet crop); center: centre, Lanczos")
    prepare.add_argument("--channels", type=int, choices=[1, 3], default=3)
    prepare.add_argument("--limit", type=_positive_int, default=None, help="the first N images only")
    prepare.add_argument("--workers", type=_positive_int, default=1, help="processes that decode, crop and encode")
    prepare.add_argument("--quiet", action="store_true", help="no progress bar")

    commands.add_parser("presets", help="list the training presets")
    doctor = commands.add_parser("doctor", help="build info, devices, and every op checked on every backend")
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.add_argument("--no-speed", action="store_true", help="skip the speed probe")
    return parser


# ---------------------------------------------------------------------------------------------
# train

def training_config(preset: Optional[str], config_file: Optional[Path], overrides: Sequence[str],
                    name: Optional[str] = None, base: Optional[TrainingConfig] = None) -> TrainingConfig:
    """Preset (or `base`), then the YAML file, then --name, then the overrides; validated."""
    config = base if base is not None and preset is None else get_preset(preset or DEFAULT_PRESET)
    if config_file is not None:
        config = load_config(config_file, base=config)
    if name is not None:
        config = apply_overrides(config, [f"log.name={name}"])
    return _with_encoded_latents(apply_overrides(config, overrides)).validate()


def _with_encoded_latents(config: TrainingConfig) -> TrainingConfig:
    """Latents written by `imm-ext encode` carry a JSON beside them: its VAE becomes data.vae and its
    stored form data.options.stored, unless the configuration sets them."""
    data = config.data
    record = Path(data.path).with_suffix(".json") if data.name == "latents" and data.path else None
    if record is None or not record.is_file():
        return config
    try:
        written = json.loads(record.read_text())
    except ValueError as error:
        raise ConfigError(f"data.path: {str(record)!r} beside the latents is not valid JSON ({error})") from None
    options = dict(data.options)
    options.setdefault("stored", written.get("stored", "latents"))
    return replace(config, data=replace(data, vae=data.vae or written.get("vae"), options=options))


def _resume_base(arguments) -> Optional[TrainingConfig]:
    """Resuming without --preset or --config continues with the configuration the checkpoint was trained
    with (the overrides still apply on top): the given checkpoint's, or for `--resume auto` the newest of
    the run directory the other arguments name, if it has one."""
    if arguments.resume is None or arguments.preset is not None or arguments.config is not None:
        return None
    if arguments.resume == "auto":
        named = training_config(None, None, arguments.overrides, arguments.name)
        path = resolve_resume("auto", Path(named.log.root) / named.run_name / "checkpoints")
        if path is None:
            return None
    else:
        path = resolve_resume(arguments.resume, ".")
    return parse_config(load_checkpoint(path)["config"], source=f"the config in {path}")


def _train(arguments) -> int:
    from .train.trainer import Trainer

    base = _resume_base(arguments)
    config = training_config(arguments.preset, arguments.config, arguments.overrides, arguments.name, base)
    if arguments.print_config:
        print(dump_config(config), end="")
        return 0
    result = Trainer(config, resume=arguments.resume).run()
    if result.interrupted:
        return 130
    if result.rank == 0:
        print(f"done: {result.step} steps; outputs in {result.run_dir}/")
    return 0


# ---------------------------------------------------------------------------------------------
# sample / eval

def _decoder(config: TrainingConfig, device):
    """Latents -> images with the run's VAE (data.vae), or None for a model that makes images."""
    if config.data.name != "latents" or config.data.vae is None:
        return None
    from .data.vae import decode_latents, load_vae

    vae = load_vae(config.data.vae, device)
    return lambda latents: decode_latents(latents, vae, config.data.options)


def _as_uint8_images(samples):
    """Images in [-1, 1] (N, C, H, W) as uint8 (N, H, W, C), rounded as saving them as PNG would."""
    return ((samples.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _sample(arguments) -> int:
    import numpy as np

    from .train.evaluation import generate, grid_labels, load_trained_model, save_samples_picture

    model, config, info, _ = load_trained_model(arguments.ckpt, not arguments.no_ema)
    steps_list = arguments.steps or [config.method.sampling_steps]
    suffix = arguments.out.suffix.lower()
    if suffix not in (".png", ".npz"):
        raise ValueError(f"--out must end in .png or .npz; got {str(arguments.out)!r}")
    decoder = None if arguments.latents else _decoder(config, next(model.parameters()).device)
    labels = grid_labels(info, arguments.n) if suffix == ".png" else None
    arrays = {}
    for steps in steps_list:
        samples, used_labels = generate(model, config.method, info, steps, arguments.n, seed=arguments.seed,
                                        batch_size=arguments.batch_size, guidance=arguments.guidance, labels=labels)
        if decoder is not None:
            samples = torch.cat([decoder(chunk) for chunk in samples.split(arguments.batch_size)])
        if suffix == ".npz":
            arrays[f"samples_{steps}step"] = _as_uint8_images(samples) if decoder is not None else samples.numpy()
            if used_labels is not None:
                arrays[f"labels_{steps}step"] = used_labels.numpy()
            continue
        out = arguments.out if len(steps_list) == 1 else arguments.out.with_name(
            f"{arguments.out.stem}-{steps}step{arguments.out.suffix}")
        save_samples_picture(samples, out)
        print(f"{steps}-step samples: {out}")
    if suffix == ".npz":
        arguments.out.parent.mkdir(parents=True, exist_ok=True)
        np.savez(arguments.out, **arrays)
        print(f"samples at {', '.join(map(str, steps_list))} steps: {arguments.out}")
    return 0


def _evaluate(arguments) -> int:
    from .train.evaluation import (Metrics, evaluate_steps, load_trained_model, metrics_table, real_samples,
                                   write_metrics)

    model, config, info, step = load_trained_model(arguments.ckpt, not arguments.no_ema)
    steps_list = arguments.steps or list(config.eval.steps)
    count = arguments.n or config.eval.num_samples
    seed = config.eval.seed if arguments.seed is None else arguments.seed
    batch_size = arguments.batch_size or config.eval.batch_size
    if arguments.fid or arguments.ref:
        return _standard_fid(arguments, model, config, info, step, steps_list, count, seed, batch_size)
    metrics = Metrics(info, real_samples(config, info), config.eval.feature_net, seed=seed)
    if not metrics.available:
        raise ValueError(f"no metric is available for the data {info.name!r} {info.sample_shape} (image metrics need "
                         f"a feature network: eval.feature_net); for a standard FID use --fid --ref REF.npz")
    results = evaluate_steps(model, config.method, info, metrics, steps_list, count, seed=seed,
                             batch_size=batch_size, guidance=arguments.guidance)
    print(metrics_table(results))
    out = arguments.out or arguments.ckpt.parent.parent / f"eval-step-{step:08d}.json"
    write_metrics(results, out, {"checkpoint": str(arguments.ckpt), "step": step, "ema": not arguments.no_ema,
                                 "num_samples": count})
    print(f"metrics: {out}")
    return 0


def _standard_fid(arguments, model, config, info, step, steps_list, count, seed, batch_size) -> int:
    """FID of `count` samples per step count against the reference statistics, batch by batch."""
    from .eval.fid_reference import fid_from_statistics, inception_statistics, load_reference
    from .eval.inception import load_inception
    from .train.evaluation import generate_batches

    if not (arguments.fid and arguments.ref):
        raise ValueError("--fid and --ref go together: FID against the reference statistics in REF.npz")
    if config.data.name == "latents" and config.data.vae is None:
        raise ValueError("--fid on a latent model needs its VAE: the run's data.vae is not set (imm-ext encode "
                         "records it; or train with data.vae=DIR_OR_HUB_ID)")
    if config.data.name != "latents" and (len(info.sample_shape) != 3 or info.sample_shape[0] not in (1, 3)):
        raise ValueError(f"--fid needs image samples (1 or 3 channels); this model makes {info.sample_shape}")
    reference = load_reference(arguments.ref)
    device = next(model.parameters()).device
    inception, decoder = load_inception(device), _decoder(config, device)
    results = {}
    for steps in steps_list:
        batches = (samples if decoder is None else decoder(samples)
                   for samples, _ in generate_batches(model, config.method, info, steps, count, seed=seed,
                                                      batch_size=batch_size, guidance=arguments.guidance))
        mu, sigma, _ = inception_statistics(batches, inception)
        results[str(steps)] = fid_from_statistics(mu, sigma, *reference, source=str(arguments.ref))
        print(f"{steps} step{'s' if steps > 1 else ''}: FID {results[str(steps)]:.3f} ({count} samples, seed {seed})")
    out = arguments.out or arguments.ckpt.parent.parent / f"fid-step-{step:08d}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"fid_by_steps": results, "checkpoint": str(arguments.ckpt), "step": step,
                               "reference": str(arguments.ref), "num_samples": count, "seed": seed,
                               "ema": not arguments.no_ema, "guidance": arguments.guidance}, indent=2) + "\n")
    print(f"FID: {out}")
    return 0


def _image_dataset(source: Path):
    """The images at `source`: a zip, an image folder, or an .npz/.npy array."""
    from .data import load_dataset

    kind = "folder" if source.is_dir() else "zip" if source.suffix == ".zip" else source.suffix.lstrip(".")
    if kind not in ("folder", "zip", "npz", "npy"):
        raise ValueError(f"source must be a zip, an image folder, or an .npz/.npy of images; got {str(source)!r}")
    return load_dataset(kind, path=source)


def _encode(arguments) -> int:
    from .data.vae import encode_dataset, load_vae

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    summary = encode_dataset(_image_dataset(arguments.source), arguments.out, load_vae(arguments.vae, device),
                             batch_size=arguments.batch_size, workers=arguments.workers, vae_name=arguments.vae,
                             source=str(arguments.source),
                             show_progress=not arguments.quiet)
    channels, height, width = summary["shape"][1:]
    print(f"{summary['images']} images -> latents {channels // 2}x{height}x{width} (posterior mean and std): "
          f"{arguments.out}; train with data.path={arguments.out}")
    return 0


def _fid_reference(arguments) -> int:
    import torch

    from .eval.fid_reference import inception_statistics, save_reference
    from .eval.inception import load_inception

    dataset = _image_dataset(arguments.source)
    total = min(len(dataset), arguments.limit or len(dataset))

    def batches():
        for start in range(0, total, arguments.batch_size):
            yield torch.stack([dataset[index][0] for index in range(start, min(start + arguments.batch_size, total))])

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    mu, sigma, count = inception_statistics(batches(), load_inception(device))
    save_reference(arguments.out, mu, sigma, count=count)
    print(f"reference statistics of {count} images: {arguments.out}")
    return 0


def _prepare(arguments) -> int:
    from .data.prepare import prepare_dataset

    summary = prepare_dataset(arguments.source, arguments.out, split=arguments.split, resolution=arguments.resolution,
                              crop=arguments.crop, channels=arguments.channels, limit=arguments.limit,
                              workers=arguments.workers, show_progress=not arguments.quiet)
    classes = f", {len(summary['class_names'])} classes" if summary["class_names"] else ""
    print(f"{summary['images']} images {'x'.join(map(str, summary['shape']))}"
          f"{' with labels' if summary['labelled'] else ''}{classes}: {summary['out']} (sha256 {summary['sha256']})")
    return 0


def _presets() -> int:
    for name in sorted(TRAINING_PRESETS):
        preset = TRAINING_PRESETS[name]
        print(f"{name:28s} data={preset.data.name} model={preset.model.kind}{'/' + preset.model.preset if preset.model.preset else ''} "
              f"steps={preset.train.steps} batch={preset.train.batch_size}")
    return 0


def _doctor(arguments) -> int:
    from .health_check import main as doctor_main

    return doctor_main((["--json"] if arguments.json else []) + (["--no-speed"] if arguments.no_speed else []))


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .train.distributed import PeerFailure
    from .train.trainer import TrainingDiverged

    parser = _parser()
    arguments, extra = parser.parse_known_args(argv)
    if arguments.command is None:  # `imm-ext` alone runs the default training job
        arguments, extra = parser.parse_known_args(["train"])
    if arguments.command == "train":  # key=value overrides may also follow options
        arguments.overrides += [item for item in extra if "=" in item and not item.startswith("-")]
        extra = [item for item in extra if item not in arguments.overrides]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    handlers = {"train": _train, "sample": _sample, "eval": _evaluate, "prepare": _prepare, "encode": _encode,
                "fid-ref": _fid_reference, "presets": lambda _: _presets(), "doctor": _doctor}
    try:
        return handlers[arguments.command](arguments)
    except (ConfigError, CheckpointError, ValueError, TypeError, FileNotFoundError, ImportError) as error:
        print(f"imm-ext {arguments.command}: error: {error}", file=sys.stderr)
        return 2
    except (TrainingDiverged, PeerFailure) as error:
        print(f"imm-ext {arguments.command}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
