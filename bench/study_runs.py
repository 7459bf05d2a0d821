"""Training runs and their scores, shared by the equal-time study (quality.py) and the variant sets
(ablation.py): `imm-ext train` jobs side by side, their measured speeds, and the scores of a checkpoint
at every sampler step count."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional

from imm_ext.train.evaluation import Metrics, evaluate_steps, load_trained_model, real_samples

IMM_STEPS = (1, 2, 4, 8)
FM_STEPS = (1, 2, 4, 8, 16, 25, 32, 50, 100)
METHODS = {"imm": [], "flow_matching": ["method.kind=flow_matching"]}
# Each method at its own best recipe where the preset (tuned for IMM) is not the baseline's best. Digits:
# flow matching at lr 2e-3 beat the preset's 1e-3 at every budget (bench/results/ablation-recipe-digits-*,
# quality-digits-*), while IMM is best at 1e-3.
TUNED = {"digits": {"flow_matching": ["optimizer.lr=2e-3"]}}


def method_overrides(dataset: str) -> Dict[str, List[str]]:
    """Each method's overrides of the dataset's preset in the equal-time study."""
    return {m: [*o, *TUNED.get(dataset, {}).get(m, [])] for m, o in METHODS.items()}


def training_folder(runs_dir) -> contextlib.AbstractContextManager:
    """Where the runs train: runs_dir, kept (its checkpoints stay for a later look), or a temporary
    folder removed after scoring."""
    if runs_dir is None:
        return tempfile.TemporaryDirectory()
    Path(runs_dir).mkdir(parents=True, exist_ok=True)
    return contextlib.nullcontext(str(runs_dir))


QUIET = ["log.progress=false", "log.tensorboard=false", "log.sample_every=0", "eval.steps=1", "eval.num_samples=64"]


def train_together(dataset: str, root: Path, jobs: Dict[str, List[str]], seed: int) -> Dict[str, dict]:
    """`imm-ext train --preset dataset` for every job at once (its overrides after the preset), one thread
    each, in root/<job>-<seed>; each job's command, wall and CPU seconds and run directory.

    A study given the same folder again (interrupted while training or scoring) loses no training: a job
    whose run directory holds its finished run (the config this command resolves to, and a summary) is
    not run again ("reused": its wall time from its log, no CPU time), and one with checkpoints but no
    summary continues from its newest (`--resume auto`, exact)."""
    runs, report = {}, {}
    for name, overrides in jobs.items():
        command = [sys.executable, "-m", "imm_ext.cli", "train", "--preset", dataset, "--name", f"{name}-{seed}",
                   "--resume", "auto", f"log.root={root}", f"train.seed={seed}", "train.threads=1",
                   "log.keep_checkpoints=100000", *QUIET, *overrides]
        run_dir = root / f"{name}-{seed}"
        if finished_run(command, run_dir):
            log = (run_dir / "log.jsonl").read_text().splitlines()
            report[name] = {"command": command[1:], "wall_s": json.loads(log[-1])["elapsed_s"], "cpu_s": None,
                            "run_dir": str(run_dir), "reused": True}
            continue
        runs[name] = (subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                       env={**os.environ, "OMP_NUM_THREADS": "1"}), time.perf_counter(), command)
    for name, (process, started, command) in runs.items():
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        error = process.stderr.read()
        if status != 0:
            raise RuntimeError(f"{name} training failed:\n{error[-3000:]}")
        report[name] = {"command": command[1:], "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
                        "run_dir": str(root / f"{name}-{seed}")}
    return {name: report[name] for name in jobs}


def finished_run(command: List[str], run_dir: Path) -> bool:
    """Whether run_dir holds the finished run of this `imm-ext train` command: a summary, and the config
    the command resolves to (`--print-config`), to the byte."""
    if not (run_dir / "summary.json").is_file() or not (run_dir / "config.yaml").is_file():
        return False
    resolved = subprocess.run([*command[:4], "--print-config", *command[4:]], capture_output=True, text=True,
                              check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout
    return resolved == (run_dir / "config.yaml").read_text()


SPEEDS_FILE = "speeds.json"  # in a study's runs folder: {"steps_per_s": ...}, as in a results JSON


def remembered_speeds(runs_dir) -> Optional[Path]:
    """The speeds file a study kept in its runs folder, if any: a rerun in the same folder trains to the
    same steps."""
    if runs_dir is None or not (Path(runs_dir) / SPEEDS_FILE).is_file():
        return None
    return Path(runs_dir) / SPEEDS_FILE


def remember_speeds(runs_dir, speeds: Dict[str, float]) -> None:
    if runs_dir is not None:
        Path(runs_dir).mkdir(parents=True, exist_ok=True)
        (Path(runs_dir) / SPEEDS_FILE).write_text(json.dumps({"steps_per_s": speeds}, indent=1) + "\n")


def measure_speeds(dataset: str, jobs: Dict[str, List[str]], steps: int) -> Dict[str, float]:
    """Training steps per second of each job, all running at once, from their own logs."""
    with tempfile.TemporaryDirectory() as root:
        timing = [f"train.steps={steps}", f"log.checkpoint_every={steps}", "log.log_every=1"]
        train_together(dataset, Path(root), {name: [*overrides, *timing] for name, overrides in jobs.items()}, 0)
        speeds = {}
        for name in jobs:
            log = [json.loads(line) for line in (Path(root) / f"{name}-0" / "log.jsonl").read_text().splitlines()]
            # skip the first steps (start-up, first allocations): the rate over the second half
            half = log[len(log) // 2]
            speeds[name] = (log[-1]["step"] - half["step"]) / (log[-1]["elapsed_s"] - half["elapsed_s"])
        return speeds


def score(checkpoint: Path, method: str, samples: int) -> Dict[str, Dict[str, Dict[str, float]]]:
    """{sampler: {steps: metrics}} of one checkpoint, EMA weights, kept in <run>/scores/: a study given
    its runs folder again (stopped while scoring, which takes longer than training for flow matching's
    many-step samplers) reads the scores of a checkpoint it has already scored, the same file to the byte
    (its SHA-256), instead of sampling again."""
    kept = checkpoint.parent.parent / "scores" / f"{checkpoint.stem}-{method}-{samples}.json"
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    if kept.is_file():
        stored = json.loads(kept.read_text())
        if stored["checkpoint_sha256"] == digest:
            return stored["scores"]
    scores = _sample_and_score(checkpoint, method, samples)
    kept.parent.mkdir(exist_ok=True)
    partial = kept.with_suffix(".partial")
    partial.write_text(json.dumps({"checkpoint_sha256": digest, "scores": scores}, indent=1))
    partial.replace(kept)
    return scores


def _sample_and_score(checkpoint: Path, method: str, samples: int) -> Dict[str, Dict[str, Dict[str, float]]]:
    model, config, info, _ = load_trained_model(checkpoint, use_ema=True)
    config = replace(config, eval=replace(config.eval, num_samples=samples))  # as many real samples as generated
    metrics = Metrics(info, real_samples(config, info), config.eval.feature_net, seed=config.eval.seed)
    samplers = {"imm": (config.method, IMM_STEPS)} if method == "imm" else {
        solver: (replace(config.method, fm_solver=solver), FM_STEPS) for solver in ("euler", "heun")}
    return {name: {str(k): {**v, "real_samples": len(metrics.real)}
                   for k, v in evaluate_steps(model, sampler_config, info, metrics, steps, samples,
                                              seed=config.eval.seed, batch_size=500).items()}
            for name, (sampler_config, steps) in samplers.items()}


def network_evaluations(sampler: str, steps: int) -> int:
    return 2 * steps if sampler == "heun" else steps


REPOSITORY = Path(__file__).resolve().parent.parent


def recorded_path(path: Path) -> str:
    """A written file's path as a results JSON records it: from the repository root when inside it, so a
    committed JSON names its figures the same on every machine."""
    try:
        return str(Path(path).resolve().relative_to(REPOSITORY))
    except ValueError:
        return str(path)
