"""Named training recipes: `TRAINING_PRESETS[name]` is a complete TrainingConfig.

- "toy2d": 8 Gaussians in 2-D with an MLP (imm-method.md §8); seconds to minutes on a CPU.
- "digits": scikit-learn's 8x8 digits with a small DiT (patch 4, hidden 64, depth 2): the default
  `imm-ext train` job, a few minutes on a 2-core CPU.
- "fashion-mnist": 28x28 Fashion-MNIST (padded to 32x32) with a small DDPM++ UNet, sized for about 30
  minutes on a 2-core CPU.
- "cifar10": the paper's Table 5 column for CIFAR-10 (DDPM++ UNet 55M, RAdam 1e-4, B = 4096, M = 4,
  400K iterations, EMA 0.9999, x-flip, dropout 0.2, Simple-EDM on OT-FM with k = 15), reading the zip
  that `imm-ext prepare cifar-10-python.tar.gz cifar10.zip` writes (data.path).
- "imagenet256-latent" and "imagenet256-latent-S|B|L|XL": Table 5's ImageNet-256 columns on pre-encoded
  SD-VAE latents (4x32x32, data.path): DiT-S/2 ... XL/2, AdamW 1e-4, B = 4096, M = 4, 1.2M iterations,
  label dropout 0.1, guidance 1.5 (the unsuffixed name is XL/2); "imagenet256-latent-XL-fp16" is the
  headline FP16 run (t - s time input, minimum gap 1e-4, a = 2).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Dict

from ..method.presets import PRESETS
from .config import (DataConfig, EvalConfig, LogConfig, LoopConfig, MethodConfig, ModelConfig, OptimizerConfig,
                     TrainingConfig)


def _toy2d() -> TrainingConfig:
    return TrainingConfig(
        preset="toy2d",
        data=DataConfig(name="8gaussians", eval_split="test"),
        model=ModelConfig(kind="mlp", options={"width": 256, "depth": 3}),
        method=MethodConfig.from_preset(PRESETS["toy2d"]),
        optimizer=OptimizerConfig(name="adamw", lr=1e-3),
        train=LoopConfig(steps=3000, batch_size=1024, ema_decay=0.999, ema_warmup=True),
        log=LogConfig(log_every=50, checkpoint_every=1000, grid_size=2000),
        eval=EvalConfig(num_samples=2000, batch_size=2000))


def _digits() -> TrainingConfig:
    return TrainingConfig(
        preset="digits",
        # Metrics compare against all 1797 digits: the 300 test images alone give 150-image halves, too
        # few for a Frechet distance in 64-d features (its bias dominates: real vs real FD 23 at n = 150).
        data=DataConfig(name="digits", eval_split="all"),
        # 4x4 patches (4 tokens of an 8x8 digit): at equal time they beat 2x2 patches for both methods at
        # every budget and seed (bench/results/quality-digits-*, the network ablation): more, cheaper steps.
        model=ModelConfig(kind="dit", options={"patch_size": 4, "hidden_size": 64, "depth": 2, "heads": 4}),
        # The method's settings are the paper's choices, each checked at 5 minutes against the variants of
        # its ablation (bench/results/ablation-*-digits-*): the Laplace kernel, the eta mapping with k = 12,
        # the weighting with a = 1, b = 5, and M = 4 were best at 1 step or within seed noise of the best.
        method=MethodConfig.from_preset(PRESETS["digits"]),
        # lr 1e-3 for IMM: 2e-3 helped its 2-step FD at 5 minutes, but by 15 its 1-step FD had more than
        # doubled (bench/results/quality-digits-*); the flow-matching baseline trains at its own best,
        # 2e-3 (bench/study_runs.py). A batch of 256 or a wider, deeper DiT did worse at equal time.
        optimizer=OptimizerConfig(name="adamw", lr=1e-3, warmup_steps=100, grad_clip=1.0),
        # One thread: at this size a second OpenMP thread gains little, and on a shared 2-core machine its
        # spin-waiting makes steps several times slower.
        train=LoopConfig(steps=6000, batch_size=128, ema_decay=0.999, ema_warmup=True, threads=1),
        log=LogConfig(log_every=25, sample_every=2000, checkpoint_every=1000, grid_size=64),
        eval=EvalConfig(num_samples=1000, batch_size=500))


def _fashion_mnist() -> TrainingConfig:
    # Sized for a 2-core CPU (about 30 minutes). A small DDPM++ UNet (16 channels at 32x32, 32 at 16x16 and
    # 8x8, no attention) on the padded images: at equal time it beat the digits recipe's DiT on 4x4 patches
    # (96 wide, 3 deep) for both methods, IMM at 2 steps by 99 -> 60 FD, in fewer, dearer steps
    # (bench/results/ablation-network-fashion-mnist-*). On a GPU, widen it (64-128 channels, attention at
    # 8x8, batch 512, EMA 0.9999).
    return TrainingConfig(
        preset="fashion-mnist",
        data=DataConfig(name="fashion-mnist", eval_split="test", options={"pad": True}),
        model=ModelConfig(kind="unet", options={"model_channels": 16, "channel_mult": [1, 2, 2], "num_blocks": 1,
                                                "attn_resolutions": [], "heads": 1, "dropout": 0.0}),
        # T = 0.999 and M = 2 (64 groups a batch of 128): against the paper's T = 0.994 and M = 4, at 10 and 30
        # minutes, T = 0.999 took a fifth to a third off IMM's FD at every step count, and M = 2 beat M = 4
        # at 30 minutes on both seeds (bench/results/ablation-noise-fashion-mnist-*, -particles-*).
        method=MethodConfig.from_preset(PRESETS["digits"], k=13, T=0.999, particles=2),
        optimizer=OptimizerConfig(name="adamw", lr=1e-3, warmup_steps=100, grad_clip=1.0),
        train=LoopConfig(steps=1200, batch_size=128, ema_decay=0.999, ema_warmup=True, threads=1),
        log=LogConfig(log_every=25, sample_every=600, checkpoint_every=200, grid_size=64),
        eval=EvalConfig(num_samples=1000, batch_size=500))


def _cifar10() -> TrainingConfig:
    return TrainingConfig(
        preset="cifar10",
        data=DataConfig(name="zip", eval_split="train", hflip=True),  # `imm-ext prepare cifar-10-*.tar.gz`
        model=ModelConfig(kind="unet", options={"model_channels": 128, "channel_mult": [2, 2, 2],
                                                "channel_mult_emb": 4, "num_blocks": 4,
                                                "attn_resolutions": [16], "dropout": 0.2}),
        method=MethodConfig.from_preset(PRESETS["cifar10"]),
        optimizer=OptimizerConfig(name="radam", lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0),
        train=LoopConfig(steps=400_000, batch_size=4096, precision="tf32", ema_decay=0.9999),
        log=LogConfig(log_every=100, sample_every=10_000, checkpoint_every=10_000, grid_size=64),
        eval=EvalConfig(steps=(1, 2), num_samples=50_000, batch_size=1000, every=50_000, feature_net="inception"))


_IMAGENET_VARIANTS = {"S": "S/2", "B": "B/2", "L": "L/2", "XL": "XL/2"}


def _imagenet256_latent(variant: str) -> TrainingConfig:
    return TrainingConfig(
        preset=f"imagenet256-latent-{variant}",
        data=DataConfig(name="latents", eval_split="train", conditional=True),
        model=ModelConfig(kind="dit", preset=_IMAGENET_VARIANTS[variant]),
        method=MethodConfig.from_preset(PRESETS["imagenet256"]),
        optimizer=OptimizerConfig(name="adamw", lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0),
        train=LoopConfig(steps=1_200_000, batch_size=4096, precision="tf32", ema_decay=0.9999),
        log=LogConfig(log_every=100, sample_every=10_000, checkpoint_every=10_000, grid_size=64),
        eval=EvalConfig(steps=(1, 2, 4, 8), num_samples=50_000, batch_size=500, every=100_000))


def _presets() -> Dict[str, TrainingConfig]:
    presets = {"toy2d": _toy2d(), "digits": _digits(), "fashion-mnist": _fashion_mnist(), "cifar10": _cifar10()}
    for variant in _IMAGENET_VARIANTS:
        presets[f"imagenet256-latent-{variant}"] = _imagenet256_latent(variant)
    presets["imagenet256-latent"] = replace(presets["imagenet256-latent-XL"], preset="imagenet256-latent")
    headline = presets["imagenet256-latent-XL"]
    presets["imagenet256-latent-XL-fp16"] = replace(
        headline, preset="imagenet256-latent-XL-fp16",
        method=MethodConfig.from_preset(PRESETS["imagenet256-fp16"]), train=replace(headline.train, precision="fp16"))
    return presets


TRAINING_PRESETS: Dict[str, TrainingConfig] = _presets()
DEFAULT_PRESET = "digits"


def get_preset(name: str) -> TrainingConfig:
    if name not in TRAINING_PRESETS:
        raise ValueError(f"preset must be one of {', '.join(sorted(TRAINING_PRESETS))}; got {name!r}")
    return TRAINING_PRESETS[name]
