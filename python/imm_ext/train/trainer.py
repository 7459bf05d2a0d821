"""The training loop for IMM (and the flow-matching baseline on the same network), read top to bottom as
numbered steps in `Trainer._run`.

    imm-ext train                                  # the default job: IMM on 8x8 digits, CPU, minutes
    imm-ext train --preset toy2d train.steps=2000 method.kind=flow_matching
    imm-ext train --preset digits --resume auto    # continue runs/digits from its newest checkpoint
    torchrun --nproc_per_node 8 -m imm_ext.cli train --preset imagenet256-latent-XL data.path=latents.npz
    torchrun --nnodes 4 --node_rank $NODE --rdzv_backend c10d --rdzv_endpoint $HOST:29500 \
        --nproc_per_node 8 -m imm_ext.cli train --preset imagenet256-latent-XL data.path=latents.npz

Per step: every rank draws its share of the global batch (whole IMM groups of M particles), splits it
into micro-batches that are multiples of M (gradient accumulation never splits a group), back-propagates
each with the gradient all-reduce only on the last, then all ranks agree on whether the loss and
gradients were finite before the optimiser step and the EMA update, and after the step on whether a
stop was requested.
A non-finite step is skipped and counted, on the device (step_guard.py): a step never waits for the
host; the counters are read back on logged and checkpoint steps, where a streak of `train.max_nonfinite`
or more non-finite steps aborts the run. No checkpoint is written during a non-finite streak, so the
newest checkpoint on disk is always one from finite weights, and rotation never deletes it.

Run directory: one run owns it for its whole life (run_directory.py; a second run fails at once naming
the holder). A fresh run refuses a directory that holds checkpoints, and a resume refuses to mix runs
(another run's checkpoint into a directory with checkpoints of its own, an older checkpoint while newer
ones exist) or to continue with settings that change what is trained (resume_check.py).

Exact resume: a checkpoint holds the network, EMA, optimiser, gradient scaler, step, every rank's data
position and every random generator (Python, numpy, torch CPU and CUDA, the loss's generator), so a run
stopped at step n and resumed gives bit-identical parameters to one that never stopped (same world size,
same device type). SIGINT / SIGTERM stop at the end of the current step and write a checkpoint.

In a distributed run only rank 0 writes files. Periodic sampling and evaluation run on rank 0 while the
other ranks wait in the next step's collective: keep them shorter than train.dist_timeout_s.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from . import distributed
from ..models import save_model
from ..process_memory import freed_memory_kept
from .checkpoint import (CheckpointError, latest_checkpoint, list_checkpoints, load_checkpoint, newest_good_checkpoint,
                         remove_orphaned_temporaries, resolve_resume, save_checkpoint)
from .components import (DataInfo, build_network, build_optimizer, data_info, learning_rate, load_data,
                         network_arguments, parametrize)
from .config import ConfigError, TrainingConfig, with_precision_defaults
from .config_io import dump_config, parse_config
from .ema import EMA
from .evaluation import (Metrics, evaluate_steps, generate, grid_labels, metrics_table, real_samples,
                         save_samples_picture, write_metrics)
from .methods import training_method
from .plots import loss_curve
from .precision import configure_precision, grad_scaler, wrap_network
from .resume_check import check_resume
from .rng_state import capture_rng_state, restore_rng_state, seed_everything
from .run_directory import RunDirectoryLock
from .run_log import RunLog, log_values, read_log, truncate_log
from .step_guard import StepGuard, optimizer_step_unless

CHECKPOINT_DIR = "checkpoints"


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    interrupted: bool
    checkpoint: Optional[Path] = None
    metrics: Dict[int, Dict[str, float]] = field(default_factory=dict)
    parameter_digests: list = field(default_factory=list)
    rank: int = 0


def rank_seed(seed: int, rank: int) -> int:
    """Distinct, reproducible seeds per rank for the loss draws and dropout."""
    return seed + 1_000_003 * rank


def parameter_digest(module: nn.Module) -> str:
    """SHA-256 of every parameter's bytes in order: equal digests mean bit-identical weights."""
    digest = hashlib.sha256()
    for parameter in module.parameters():
        digest.update(parameter.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class _StopSignals:
    """SIGINT / SIGTERM request a stop at the end of the current step (a second SIGINT interrupts at once)."""

    def __init__(self):
        self.requested: Optional[str] = None
        self._previous = {}

    def __enter__(self) -> "_StopSignals":
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number, frame) -> None:
        if number == signal.SIGINT and self.requested == "SIGINT":
            raise KeyboardInterrupt
        self.requested = signal.Signals(number).name

    def __exit__(self, *exc_info) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


class Trainer:
    """Train from `config`; `resume` is None, "auto" (the newest checkpoint of the run, if any) or a path.

    `on_step(trainer, step)` is called on every rank after each completed step (tests use it to call
    `request_stop()`, which behaves like SIGTERM).
    """

    def __init__(self, config: TrainingConfig, resume: Optional[str] = None, run_dir: Optional[Path] = None,
                 on_step: Optional[Callable[["Trainer", int], None]] = None):
        self.config = with_precision_defaults(config).validate()
        self.run_dir = Path(run_dir) if run_dir is not None else Path(self.config.log.root) / self.config.run_name
        self.resume, self.on_step = resume, on_step
        self._stop_requested: Optional[str] = None

    def request_stop(self, reason: str = "request") -> None:
        self._stop_requested = reason

    def run(self) -> TrainResult:
        context = distributed.initialize(self.config.train.device, self.config.train.dist_timeout_s)
        threads = torch.get_num_threads()
        keep_memory = self.config.train.keep_freed_memory and context.device.type == "cpu"
        try:
            with _StopSignals() as signals, (RunDirectoryLock(self.run_dir) if context.is_main
                                             else contextlib.nullcontext()), \
                    (freed_memory_kept() if keep_memory else contextlib.nullcontext()):
                self._signals = signals
                return self._run(context)
        except BaseException as error:
            if context.enabled:
                print(f"[rank {context.rank}/{context.world_size}] training failed: {type(error).__name__}: {error}",
                      file=sys.stderr, flush=True)
            raise
        finally:
            torch.set_num_threads(threads)  # train.threads applies to the run only
            distributed.shutdown(context)

    # ------------------------------------------------------------------------------------------
    def _run(self, context: distributed.DistributedContext) -> TrainResult:
        config, device = self.config, context.device
        loop, method = config.train, training_method(config.method)
        if loop.threads:
            torch.set_num_threads(loop.threads)

        # 1. Batch geometry: the global batch is split over ranks, then into micro-batches of whole groups.
        group = method.group_size
        if loop.batch_size % (context.world_size * group):
            raise ConfigError(f"train.batch_size: {loop.batch_size} must split into whole groups of {group} over "
                              f"{context.world_size} ranks (a multiple of {context.world_size * group})")
        rank_batch = loop.batch_size // context.world_size
        micro = loop.micro_batch or rank_batch
        if rank_batch % micro:
            raise ConfigError(f"train.micro_batch: {micro} must divide the per-rank batch {rank_batch}")

        # 2. Data: this rank's endless, resumable stream of batches.
        from ..data import BatchStream

        dataset = load_data(config.data)
        info = data_info(config.data, dataset)
        stream = BatchStream(dataset, rank_batch, seed=loop.seed, rank=context.rank, world_size=context.world_size,
                             hflip=config.data.hflip)

        # 3. Network, its parametrisation f_{s,t}, EMA, optimiser, gradient scaler; per-rank seeds.
        seed_everything(rank_seed(loop.seed, context.rank))
        arguments = network_arguments(config.model, info)
        arguments.setdefault("seed", loop.seed)
        network = build_network(config.model.kind, arguments).to(device)
        configure_precision(loop.precision, device)
        trained = wrap_network(network, loop.precision)
        ddp = None
        if context.enabled:
            ddp = DistributedDataParallel(trained, device_ids=[device.index] if device.type == "cuda" else None)
            trained = ddp
        model = parametrize(trained, config.method, info)
        ema = EMA(network, loop.ema_decay, loop.ema_warmup)
        optimizer = build_optimizer(network.parameters(), config.optimizer)
        scaler = grad_scaler(loop.precision, device)
        loss_fn = method.loss()
        generator = torch.Generator(device=device).manual_seed(rank_seed(loop.seed, context.rank))

        # 4. Resume: everything above comes back as it was after the checkpoint's step.
        step = 0
        guard = StepGuard(device, counts_overflow_as_streak=scaler is None)
        checkpoint_dir = self.run_dir / CHECKPOINT_DIR
        resume_path, state = self._resume_point(context, checkpoint_dir)
        if state is not None:
            notes = check_resume(parse_config(state["config"], source=f"the config in {resume_path}"), config,
                                 str(resume_path))
            if notes and context.is_main:
                print(f"note: resuming {resume_path} with changed settings ({'; '.join(notes)}): the "
                      f"continuation differs from an uninterrupted run", file=sys.stderr)
            step = self._restore(state, context, network, ema, optimizer, scaler, stream, generator, guard)
            finished = (self.run_dir / "summary.json").is_file()
            if step > loop.steps or (step == loop.steps and finished):
                raise ConfigError(f"train.steps: the checkpoint {str(resume_path)!r} is already at step {step}"
                                  f"{' and the run is finished' if finished else ''}; raise train.steps to continue")
            # step == loop.steps without a summary: killed after its last checkpoint; the final outputs follow.

        # 5. Run directory (rank 0): the resolved config and the log up to the checkpoint (a torn tail dropped).
        run_log = None
        if context.is_main:
            (self.run_dir / "config.yaml").write_text(dump_config(config))
            truncate_log(self.run_dir, step)
            run_log = RunLog(self.run_dir, step, loop.steps, progress=config.log.progress,
                             tensorboard=config.log.tensorboard)
            where = f"{context.world_size} ranks on {device.type}" if context.enabled else str(device)
            run_log.message(f"imm-ext train: {config.run_name} ({method.kind}, {info.name} {info.sample_shape}, "
                            f"{sum(p.numel() for p in network.parameters()):,} parameters, {where})"
                            + (f", resumed from {resume_path} at step {step}" if resume_path else ""))

        # 6. The loop.
        def checkpoint_payload() -> Dict[str, Any]:
            rank_state = {"rng": capture_rng_state({"loss": generator}), "data": stream.state_dict()}
            ranks = distributed.gather_objects(context, rank_state)
            return {"step": step, "model": network.state_dict(), "ema": ema.state_dict(),
                    "optimizer": optimizer.state_dict(), "scaler": None if scaler is None else scaler.state_dict(),
                    "config": dump_config(config), "network": {"kind": config.model.kind, "arguments": arguments},
                    "data_info": info.as_dict(), "world_size": context.world_size, "ranks": ranks,
                    "counters": guard.state_dict()}

        def write_checkpoint() -> Optional[Path]:
            payload = checkpoint_payload()  # a collective: every rank takes part
            if not context.is_main:
                return None
            return save_checkpoint(payload, checkpoint_dir, config.log.keep_checkpoints)

        stop_reason, last_checkpoint = None, resume_path
        try:
            while step < loop.steps:
                # 6a. Learning rate (warmup, then the schedule) and this rank's batch.
                lr = learning_rate(config.optimizer, step, loop.steps)
                for param_group in optimizer.param_groups:
                    param_group["lr"] = lr
                x, labels = next(stream)
                x = x.to(device, non_blocking=True)
                labels = labels.to(device) if info.num_classes else None

                # 6b. Forward / backward over micro-batches of whole groups; all-reduce on the last only.
                optimizer.zero_grad(set_to_none=True)
                chunks = rank_batch // micro
                loss_total = torch.zeros((), device=device)
                diagnostics: Dict[str, torch.Tensor] = {}  # read back only on logged steps
                for index in range(chunks):
                    part = slice(index * micro, (index + 1) * micro)
                    sync = ddp is None or index == chunks - 1
                    with contextlib.nullcontext() if sync else ddp.no_sync():
                        loss, extra = loss_fn(model, x[part], None if labels is None else labels[part], generator)
                        scaled = loss / chunks
                        (scaler.scale(scaled) if scaler is not None else scaled).backward()
                    loss_total += loss.detach() / chunks
                    for key, value in extra.items():
                        if isinstance(value, torch.Tensor) and value.numel() == 1:
                            diagnostics[key] = diagnostics.get(key, 0.0) + value.detach().double() / chunks

                # 6c. Gradient norm (clipped when asked); the guard's verdict, agreed by all ranks on the device.
                if scaler is not None:
                    scaler.unscale_(optimizer)
                clip = config.optimizer.grad_clip if config.optimizer.grad_clip is not None else math.inf
                grad_norm = torch.nn.utils.clip_grad_norm_(network.parameters(), clip)
                skip = guard.verdict(context, loss_total, grad_norm)

                # 6d. Optimiser step and EMA update, both left undone on the device when the step is skipped.
                optimizer_step_unless(optimizer, skip)
                if scaler is not None:
                    scaler.update()
                ema.update(network, skip)
                step += 1

                # 6e. Progress, log, pictures, periodic evaluation (rank 0); then all ranks agree on stopping
                #     (SIGINT / SIGTERM / request_stop) and write a checkpoint when due or stopping. The guard's
                #     counters come back to the host on logged and checkpoint steps only (the step's only
                #     reads): a long non-finite streak aborts there, and no checkpoint is written in a streak.
                if run_log is not None:
                    run_log.advance(step)
                counts = None
                if step % config.log.log_every == 0 or step == loop.steps:
                    counts = guard.read({"grad_norm": grad_norm, **diagnostics})
                    self._check_streak(counts, step, loop.max_nonfinite, checkpoint_dir)
                    guard.start_interval()
                    if run_log is not None:
                        loss = counts["loss_sum"] / counts["loss_count"] if counts["loss_count"] else math.nan
                        norm = counts["grad_norm"] if math.isfinite(counts["grad_norm"]) else math.nan
                        run_log.record(step, log_values(loss, {key: counts[key] for key in diagnostics}, lr, norm,
                                                        int(counts["skipped_total"])))
                if run_log is not None:
                    if config.log.sample_every and step % config.log.sample_every == 0:
                        self._sample_grid(ema.model, info, self.run_dir / "samples" / f"step-{step:08d}.png")
                    if config.eval.every and step % config.eval.every == 0 and step < loop.steps:
                        self._evaluate(ema.model if config.eval.use_ema else network, info, run_log, step, final=False)
                if self.on_step is not None:
                    self.on_step(self, step)
                stop_everywhere = distributed.any_rank(context, bool(self._stop_requested or self._signals.requested))
                if step % config.log.checkpoint_every == 0 or step == loop.steps or stop_everywhere:
                    if counts is None:
                        counts = guard.read()
                        self._check_streak(counts, step, loop.max_nonfinite, checkpoint_dir)
                    streak = int(counts["consecutive_nonfinite"])
                    if streak == 0:
                        last_checkpoint = write_checkpoint() or last_checkpoint
                    elif run_log is not None:  # never from weights whose last loss was not finite
                        run_log.message(f"step {step}: no checkpoint written, the last {streak} step(s) were not "
                                        f"finite ({_newest_checkpoint_text(checkpoint_dir)})")
                if stop_everywhere:
                    stop_reason = self._stop_requested or self._signals.requested or "a stop on another rank"
                    break
        finally:
            if run_log is not None:
                run_log.close()

        # 7. Every rank checks that it ends with the same weights (DDP keeps them identical).
        digests = distributed.gather_objects(context, parameter_digest(network))
        if len(set(digests)) > 1:
            raise RuntimeError(f"the ranks ended with different parameters (digests {digests})")
        result = TrainResult(self.run_dir, step, stop_reason is not None, last_checkpoint, parameter_digests=digests,
                             rank=context.rank)
        if stop_reason is not None:
            if context.is_main:
                print(f"stopped by {stop_reason} at step {step}; {_newest_checkpoint_text(checkpoint_dir)}; "
                      f"continue with --resume auto", file=sys.stderr, flush=True)
            return result

        # 8. Final outputs (rank 0): pictures and metrics at each step count, loss curve, EMA network, summary.
        if context.is_main:
            result.metrics = self._evaluate(ema.model if config.eval.use_ema else network, info, None, step,
                                            final=True)
            self._loss_curve()
            save_model(ema.model, self.run_dir / "model-ema.safetensors")  # the EMA network alone, for reuse
            summary = {"step": step, "checkpoint": str(last_checkpoint), "parameter_sha256_by_rank": digests,
                       "skipped_steps": guard.state_dict()["skipped_total"], "world_size": context.world_size,
                       "metrics_by_steps": {str(k): v for k, v in result.metrics.items()}}
            temporary = self.run_dir / ".summary.json.tmp"  # written last and whole: it marks a finished run
            temporary.write_text(json.dumps(summary, indent=2) + "\n")
            os.replace(temporary, self.run_dir / "summary.json")
        distributed.barrier(context)
        return result

    @staticmethod
    def _check_streak(counts: Dict[str, float], step: int, max_nonfinite: int, checkpoint_dir: Path) -> None:
        streak = int(counts["consecutive_nonfinite"])
        if streak >= max_nonfinite:
            raise TrainingDiverged(
                f"the loss or the gradients were not finite for {streak} steps in a row (steps {step - streak + 1}.."
                f"{step}); the run stops here without writing a checkpoint ({_newest_checkpoint_text(checkpoint_dir)})."
                f" Lower optimizer.lr, set optimizer.grad_clip, or train in fp32/tf32, then --resume auto")

    # ------------------------------------------------------------------------------------------
    def _resume_point(self, context, checkpoint_dir: Path) -> tuple:
        """(path, checkpoint) to resume from, or (None, None) for a fresh run. Rank 0 decides first (it
        owns the directory: it clears orphaned temporaries and moves corrupt checkpoints aside), then the
        other ranks read the same file."""
        found = (None, None)
        if context.is_main:
            remove_orphaned_temporaries(checkpoint_dir)
            found = self._resume_point_of_owner(checkpoint_dir)
        distributed.barrier(context)
        if not context.is_main and self.resume:
            path = resolve_resume(self.resume, checkpoint_dir)
            found = (path, load_checkpoint(path)) if path is not None else (None, None)
        return found

    def _resume_point_of_owner(self, checkpoint_dir: Path) -> tuple:
        existing = list_checkpoints(checkpoint_dir)
        if not self.resume:
            if existing:
                raise ConfigError(f"{str(self.run_dir)!r} already holds checkpoints of an earlier run (newest "
                                  f"{existing[-1].name}); continue it with --resume auto, or give this run "
                                  f"another --name")
            return None, None
        if self.resume == "auto":
            found = newest_good_checkpoint(checkpoint_dir, warn=lambda text: print(text, file=sys.stderr))
            return found if found is not None else (None, None)
        path = resolve_resume(self.resume, checkpoint_dir)
        state = load_checkpoint(path)
        if path.resolve().parent != checkpoint_dir.resolve():
            if existing:
                raise ConfigError(f"--resume {str(path)!r} is not a checkpoint of {str(self.run_dir)!r}, which holds "
                                  f"checkpoints of its own (newest {existing[-1].name}): continuing here would mix "
                                  f"two runs and rotate those away; resume it under another --name")
        else:
            newer = [entry.name for entry in existing if entry.resolve() != path.resolve()
                     and int(entry.stem.split("-")[1]) > int(state["step"])]
            if newer:
                raise ConfigError(f"--resume {str(path)!r}: the run has newer checkpoints ({', '.join(newer)}); "
                                  f"continuing from an earlier one would mix two histories of the run: move the "
                                  f"newer ones out of {str(checkpoint_dir)!r} first, or resume from the newest")
        return path, state

    def _restore(self, state: Dict[str, Any], context, network, ema, optimizer, scaler, stream, generator,
                 guard: StepGuard) -> int:
        """Load a checkpoint's state into the freshly built objects; returns its step."""
        try:
            network.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError, ValueError) as error:
            raise CheckpointError(f"the checkpoint does not match this configuration's network or optimiser: "
                                  f"{str(error).splitlines()[0]}") from None
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if state["world_size"] == context.world_size:
            rank_state = state["ranks"][context.rank]
            restore_rng_state(rank_state["rng"], {"loss": generator})
            stream.load_state_dict(rank_state["data"])
        elif context.is_main:
            print(f"note: the checkpoint was written by {state['world_size']} ranks and this run has "
                  f"{context.world_size}: weights and optimiser resume, the data order and random draws restart "
                  f"(not an exact continuation)", file=sys.stderr)
        guard.load_state_dict(state["counters"], state.get("interval_losses"))
        return int(state["step"])

    def _sample_grid(self, network: nn.Module, info: DataInfo, path: Path) -> None:
        with _evaluation_mode(network):
            self._sample_grid_now(network, info, path)

    def _sample_grid_now(self, network: nn.Module, info: DataInfo, path: Path) -> None:
        config = self.config
        model = parametrize(network, config.method, info)
        count = config.log.grid_size
        samples, _ = generate(model, config.method, info, config.method.sampling_steps, count, seed=config.eval.seed,
                              batch_size=config.eval.batch_size, labels=grid_labels(info, count))
        save_samples_picture(samples, path)

    def _evaluate(self, network: nn.Module, info: DataInfo, run_log: Optional[RunLog], step: int,
                  final: bool) -> Dict[int, Dict[str, float]]:
        with _evaluation_mode(network):
            return self._evaluate_now(network, info, run_log, step, final)

    def _evaluate_now(self, network: nn.Module, info: DataInfo, run_log: Optional[RunLog], step: int,
                      final: bool) -> Dict[int, Dict[str, float]]:
        """Metrics (and, at the end, pictures) at every eval.steps count, written to metrics.json."""
        config = self.config
        real = real_samples(config, info)
        metrics = Metrics(info, real, config.eval.feature_net, seed=config.eval.seed)
        model = parametrize(network, config.method, info)
        started = time.perf_counter()
        results = evaluate_steps(model, config.method, info, metrics, config.eval.steps, config.eval.num_samples,
                                 seed=config.eval.seed, batch_size=config.eval.batch_size,
                                 guidance=config.eval.guidance,
                                 picture_dir=self.run_dir if final else None, picture_count=config.log.grid_size)
        name = "metrics.json" if final else f"metrics-step-{step:08d}.json"
        write_metrics(results, self.run_dir / name, {"step": step, "ema": config.eval.use_ema,
                                                     "num_samples": config.eval.num_samples,
                                                     "real_samples": int(real.shape[0]),
                                                     "seconds": time.perf_counter() - started})
        table = metrics_table(results)
        print(f"{'final' if final else 'step ' + str(step)} metrics ({config.method.kind}, "
              f"{'EMA' if config.eval.use_ema else 'raw'} weights, {config.eval.num_samples} samples):\n{table}",
              flush=True)
        if run_log is not None:
            for steps, values in results.items():
                run_log.scalars(f"eval_{steps}step", step, values)
        return results

    def _loss_curve(self) -> None:
        entries = [entry for entry in read_log(self.run_dir) if "loss" in entry]
        loss_curve([entry["step"] for entry in entries], [entry["loss"] for entry in entries],
                   self.run_dir / "loss.png", title=f"{self.config.run_name}: {self.config.method.kind} loss")


def _newest_checkpoint_text(checkpoint_dir: Path) -> str:
    newest = latest_checkpoint(checkpoint_dir)
    return f"the newest checkpoint is {newest}" if newest is not None else "no checkpoint has been written yet"


@contextlib.contextmanager
def _evaluation_mode(network: nn.Module):
    """Sample with dropout off, then give the network back in the mode it was in."""
    was_training = network.training
    network.eval()
    try:
        yield
    finally:
        network.train(was_training)
