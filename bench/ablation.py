"""Variants of a dataset's preset, trained two at a time with the trainer and scored: the paper's
ablations and the recipe search behind the tuned presets.

    python bench/quality.py --ablation particles --budgets 300      # M in {1, 2, 4, 8} at batch 128
    python bench/quality.py --ablation recipe --budgets 300         # the search, both methods
    python bench/quality.py --ablation network --budgets 300        # DiT patch 2 or 4, or a small UNet

A variant is the preset plus overrides. The ablations (particles, mapping, kernel, weighting, noise,
schedule) change nothing that costs time, so every variant trains for the same number of steps as its
method's preset: that preset's measured speed times the budget. The recipe search and the network set
change the network or the batch, so each variant trains for its own speed times the budget (equal wall
time): each variant is timed beside its method's preset, two processes at a time as training runs them,
and scaled by the two presets timed side by side as the equal-time study runs them.
Training runs two at a time with one thread each.
IMM variants are scored at 1, 2, 4 and 8 steps, flow-matching variants with Euler and Heun at 1 to 100
steps; the table and the bar figure show IMM at 1 and 2 steps and flow matching's best at 50 network
evaluations (Euler 50 or Heun 25).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Dict, List

from matplotlib.figure import Figure

from imm_ext.train.config_io import apply_overrides
from imm_ext.train.plots import save_figure
from imm_ext.train.presets import get_preset
from study_runs import (TUNED, measure_speeds, recorded_path, remember_speeds, remembered_speeds, score,
                        train_together, training_folder)

FM = ["method.kind=flow_matching"]
# A small DDPM++ UNet on 8x8 digits, 16 channels at 8x8 and 32 at 4x4, no attention (the fashion-mnist
# preset's network on two levels): fewer weights than the digits DiT, more time a step.
DIGITS_UNET = ["model.kind=unet", "model.options={model_channels: 16, channel_mult: [1, 2], num_blocks: 1, "
               "attn_resolutions: [], heads: 1, dropout: 0.0}"]
# The DiT the fashion-mnist preset had before the network search chose the UNet.
FASHION_DIT = ["model.kind=dit", "model.options={patch_size: 4, hidden_size: 96, depth: 3, heads: 4}"]
COSINE = ["optimizer.schedule=cosine", "optimizer.final_lr_fraction=0.1"]


def network_variants(dataset: str, fm_best: List[str]) -> Dict[str, List[str]]:
    """The network set at equal wall time, both methods, the preset's network first."""
    if dataset == "fashion-mnist":
        return {"IMM UNet (preset)": [], "FM UNet (preset)": fm_best,
                "IMM DiT patch 4": FASHION_DIT, "FM DiT patch 4": [*fm_best, *FASHION_DIT]}
    # On digits: the preset's DiT on 4x4 patches (4 tokens of an 8x8 digit), on 2x2 patches (16 tokens:
    # dearer, so fewer steps), 4x4 patches wider in about the same time, and a small DDPM++ UNet.
    return {"IMM DiT patch 4 (preset)": [], "FM DiT patch 4 (preset)": fm_best,
            "IMM DiT patch 2": ["model.options.patch_size=2"],
            "FM DiT patch 2": [*fm_best, "model.options.patch_size=2"],
            "IMM DiT patch 4 width 128": ["model.options.hidden_size=128"],
            "IMM UNet": DIGITS_UNET, "FM UNet": [*fm_best, *DIGITS_UNET]}


def _others(value, candidates) -> list:
    """The candidates a variant set tries beside the preset's value: all but that value."""
    return [c for c in candidates if c != value]


def _beside(name: str, key: str, value: float, candidates) -> Dict[str, List[str]]:
    """One variant per other candidate of a numeric setting: "name=c", overriding key with c."""
    return {f"{name}={c:g}": [f"{key}={c:g}"] for c in _others(value, candidates)}


def _rate(lr: float) -> str:
    """A learning rate as the overrides write it: 1e-3, 2e-3, 1.5e-4."""
    mantissa, exponent = f"{lr:.6e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def variant_sets(dataset: str) -> Dict[str, tuple]:
    """name -> (equal "steps" or equal "time", {variant: overrides}) for a dataset's preset; the first
    variant of each method is its preset (flow matching at its own best learning rate where it has one).
    The labels name the values of this dataset's preset, and no variant repeats them."""
    fm_best = [*FM, *TUNED.get(dataset, {}).get("flow_matching", [])]
    preset = get_preset(dataset)
    method, lr, schedule = preset.method, preset.optimizer.lr, preset.optimizer.schedule
    fm_lr = apply_overrides(preset, fm_best).optimizer.lr
    return {
        # Paper: M = 1 (the consistency-model case) trains worse or unstably; M > 1 better.
        "particles": ("steps", {f"M={method.particles} (preset)": [],
                                **_beside("M", "method.particles", method.particles, (1, 2, 4, 8))}),
        # r(s, t): a decrement of (T - eps) / 2^k in eta, t or lambda; larger k, a smaller gap t - r.
        "mapping": ("steps", {f"{method.mapping} k={method.k} (preset)": [],
                              **{f"{method.mapping} k={k}": [f"method.k={k}"] for k in (method.k - 2, method.k + 2)},
                              **{f"{m} k={method.k}": [f"method.mapping={m}"]
                                 for m in _others(method.mapping, ("eta", "t", "lambda"))}}),
        # Paper (Table 3): Laplace best, energy distance and RBF worse.
        "kernel": ("steps", {f"{method.kernel} (preset)": [],
                             **{k: [f"method.kernel={k}"]
                                for k in _others(method.kernel, ("laplace", "gaussian", "energy"))}}),
        # Paper (Table 4): w(s, t) with a = 1 and a tuned b beats no weighting.
        "weighting": ("steps", {f"a={method.a:g} b={method.b:g} (preset)": [],
                                **{f"a={a:g} b={method.b:g}": [f"method.a={a:g}"] for a in _others(method.a, (1, 2))},
                                **{f"a={method.a:g} b={b:g}": [f"method.b={b:g}"] for b in _others(method.b, (2, 5))},
                                "none": ["method.weighting=none"]}),
        # The decay over a longer run: twice the learning rate falling to a tenth, for either method.
        "decay": ("steps", {f"IMM lr {_rate(lr)} {schedule} (preset)": [],
                            f"FM lr {_rate(fm_lr)} {schedule} (preset)": fm_best,
                            f"IMM lr {_rate(2 * lr)} cosine": [f"optimizer.lr={_rate(2 * lr)}", *COSINE],
                            f"FM lr {_rate(2 * fm_lr)} cosine": [*FM, f"optimizer.lr={_rate(2 * fm_lr)}", *COSINE]}),
        # The noise range: the smallest time eps_t and the largest T that training and sampling use.
        "noise": ("steps", {f"eps_t={method.eps_t:g} T={method.T:g} (preset)": [],
                            **_beside("eps_t", "method.eps_t", method.eps_t, (0, 0.006, 0.02)),
                            **_beside("T", "method.T", method.T, (0.98, 0.994, 0.999))}),
        "network": ("time", network_variants(dataset, fm_best)),
        # The learning rate after warmup: constant (the paper's), or a cosine or linear fall to a tenth.
        "schedule": ("steps", {"IMM constant (preset)": [], "FM constant (preset)": fm_best,
                               "IMM cosine": COSINE, "FM cosine": [*fm_best, *COSINE],
                               "IMM linear": ["optimizer.schedule=linear", "optimizer.final_lr_fraction=0.1"],
                               f"IMM lr {_rate(2 * lr)} cosine": [f"optimizer.lr={_rate(2 * lr)}", *COSINE]}),
        # The search: both methods at equal wall time over learning rate, EMA, batch and network.
        "recipe": ("time", {
            "IMM (preset)": [], "FM (preset)": FM,
            f"IMM lr {_rate(2 * lr)}": [f"optimizer.lr={_rate(2 * lr)}"],
            f"FM lr {_rate(2 * lr)}": [*FM, f"optimizer.lr={_rate(2 * lr)}"],
            "IMM batch 256": ["train.batch_size=256"], "FM batch 256": [*FM, "train.batch_size=256"],
            "IMM width 96 depth 3": ["model.options.hidden_size=96", "model.options.depth=3"],
            "FM width 96 depth 3": [*FM, "model.options.hidden_size=96", "model.options.depth=3"],
            "IMM k=10": ["method.k=10"], "IMM b=3": ["method.b=3"]}),
    }


SET_NAMES = tuple(variant_sets("digits"))


def is_flow_matching(overrides: List[str]) -> bool:
    return "method.kind=flow_matching" in overrides


def headline(scores: dict, flow_matching: bool) -> Dict[str, float]:
    """The numbers a table shows: IMM FD at 1 and 2 steps, or flow matching's best FD at 50 evaluations."""
    if flow_matching:
        return {"fm_best_50_nfe": min(scores["euler"]["50"]["fd"], scores["heun"]["25"]["fd"])}
    return {"imm_1": scores["imm"]["1"]["fd"], "imm_2": scores["imm"]["2"]["fd"]}


def run_variant_set(name: str, dataset: str, budget: float, seeds: List[int], samples: int, speeds_file, out_stem: Path,
                    extra: List[str], runs_dir=None, parallel: int = 2, only=None) -> dict:
    """Train and score the variants of variant_sets(dataset)[name] (those whose slugs are in `only`, and
    the presets, when it is given); write <out_stem>.json and the bar figure."""
    mode, variants = variant_sets(dataset)[name]
    variants = chosen_variants(variants, only)
    jobs = {_slug(label): [*overrides, *extra] for label, overrides in variants.items()}
    labels = {_slug(label): label for label in variants}
    timing_steps = 30 if samples < 500 else 200
    presets = method_presets(jobs)
    speeds_file = speeds_file or remembered_speeds(runs_dir)
    if speeds_file:
        speeds = stored_speeds(json.loads(Path(speeds_file).read_text())["steps_per_s"], jobs, mode)
    else:
        if mode == "time":
            speeds = equal_load_speeds(dataset, jobs, timing_steps)
        else:
            speeds = measure_speeds(dataset, {job: jobs[job] for job in set(presets.values())}, timing_steps)
        remember_speeds(runs_dir, speeds)
    steps = {job: max(1, int(speeds[job if mode == "time" else presets[job]] * budget)) for job in jobs}
    results = {"set": name, "dataset": dataset, "mode": mode, "budget_s": budget, "steps_per_s": speeds,
               "steps": steps, "samples": samples, "variants": {job: labels[job] for job in jobs},
               "overrides": jobs, "seeds": {}, "runs": {}, "command": sys.argv}
    with training_folder(runs_dir) as root:
        for seed in seeds:
            results["seeds"][str(seed)], results["runs"][str(seed)] = {}, {}
            for chunk in _chunks(list(jobs), parallel):
                runs = train_together(dataset, Path(root), {job: [*jobs[job], f"train.steps={steps[job]}",
                                                                  f"log.checkpoint_every={steps[job]}"]
                                                            for job in chunk}, seed)
                for job, run in runs.items():
                    checkpoint = Path(run["run_dir"]) / "checkpoints" / f"step-{steps[job]:08d}.pt"
                    method = "flow_matching" if is_flow_matching(jobs[job]) else "imm"
                    scores = score(checkpoint, method, samples)
                    results["seeds"][str(seed)][job] = {"scores": scores,
                                                        "headline": headline(scores, method == "flow_matching")}
                    results["runs"][str(seed)][job] = run
    results["table"] = table(results)
    results["figure"] = recorded_path(figure(results, Path(f"{out_stem}.png")))
    Path(f"{out_stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    return results


def chosen_variants(variants: Dict[str, List[str]], only) -> Dict[str, List[str]]:
    """The variants named by slug in `only` (all when it is None), with each method's preset first."""
    if only is None:
        return variants
    slugs = {_slug(label): label for label in variants}
    unknown = sorted(set(only) - set(slugs))
    if unknown:
        raise SystemExit(f"--variants: no variant {', '.join(unknown)} in this set; it has {', '.join(slugs)}")
    presets = set(method_presets(variants).values())
    return {label: overrides for label, overrides in variants.items() if label in presets or _slug(label) in only}


def stored_speeds(stored: Dict[str, float], jobs: Dict[str, List[str]], mode: str) -> Dict[str, float]:
    """The speeds of an earlier results JSON for these jobs: an ablation's own (keyed by variant), or, at
    equal steps, an equal-time study's (keyed by method: every variant trains at the preset's speed)."""
    if all(job in stored for job in jobs):
        return {job: stored[job] for job in jobs}
    if mode == "steps" and "imm" in stored:
        return {job: stored["flow_matching" if is_flow_matching(overrides) else "imm"]
                for job, overrides in jobs.items()}
    missing = sorted(job for job in jobs if job not in stored)
    raise SystemExit(f"--speeds: the file has no speed for {', '.join(missing)} (equal-time variants need their own)")


def equal_load_speeds(dataset: str, jobs: Dict[str, List[str]], timing_steps: int) -> Dict[str, float]:
    """Steps per second of every job under the load training puts on it, two processes at a time: the
    presets timed as a pair (as the equal-time study runs them) give the scale, and each other job,
    timed beside its method's preset, its speed relative to that preset. (Timing every job at once
    skews the ratios: the jobs that finish their steps first leave the later ones more of the machine.)"""
    presets = method_presets(jobs)
    pair = measure_speeds(dataset, {job: jobs[job] for job in set(presets.values())}, timing_steps)
    speeds = {job: pair[job] for job in pair}
    for job, preset in presets.items():
        if job != preset:
            beside = measure_speeds(dataset, {preset: jobs[preset], job: jobs[job]}, timing_steps)
            speeds[job] = pair[preset] * beside[job] / beside[preset]
    return {job: speeds[job] for job in jobs}


def method_presets(jobs: Dict[str, List[str]]) -> Dict[str, str]:
    """Each job's method preset: the first job of the same method."""
    first = {}
    for job, overrides in jobs.items():
        first.setdefault(is_flow_matching(overrides), job)
    return {job: first[is_flow_matching(overrides)] for job, overrides in jobs.items()}


def mean_headline(results: dict, job: str) -> Dict[str, float]:
    per_seed = [seed[job]["headline"] for seed in results["seeds"].values()]
    return {key: sum(values[key] for values in per_seed) / len(per_seed) for key in per_seed[0]}


def table(results: dict) -> str:
    """A markdown table: one row per variant, the mean FD over seeds (and the spread with several)."""
    rows = ["| variant | steps | IMM FD 1 step | IMM FD 2 steps | FM FD best at 50 NFE |", "|---|---|---|---|---|"]
    for job, label in results["variants"].items():
        per_seed = [seed[job]["headline"] for seed in results["seeds"].values()]
        cells = []
        for key in ("imm_1", "imm_2", "fm_best_50_nfe"):
            values = [values[key] for values in per_seed if key in values]
            if not values:
                cells.append("-")
            elif len(values) == 1:
                cells.append(f"{values[0]:.2f}")
            else:
                mean = sum(values) / len(values)
                cells.append(f"{mean:.2f} ({min(values):.2f}-{max(values):.2f})")
        rows.append(f"| {label} | {results['steps'][job]} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def figure(results: dict, path: Path) -> Path:
    """Bars: each variant's mean FD (IMM at 1 and 2 steps, flow matching's best at 50 evaluations)."""
    jobs = list(results["variants"])
    figure_ = Figure(figsize=(max(5.0, 0.9 * len(jobs) + 2), 4.0), dpi=100)
    axes = figure_.add_subplot()
    series = (("imm_1", "IMM 1 step", "tab:blue"), ("imm_2", "IMM 2 steps", "tab:cyan"),
              ("fm_best_50_nfe", "FM best at 50 NFE", "tab:orange"))
    means = [mean_headline(results, job) for job in jobs]
    width = 0.8 / max(len(values) for values in means)
    bars = {key: [] for key, _, _ in series}
    for position, values in enumerate(means):  # each variant's bars centred on its tick
        present = [key for key, _, _ in series if key in values]
        for offset, key in enumerate(present):
            bars[key].append((position + (offset - (len(present) - 1) / 2) * width, values[key]))
    for key, label, colour in series:
        if bars[key]:
            axes.bar([x for x, _ in bars[key]], [y for _, y in bars[key]], width, label=label, color=colour)
    axes.set_xticks(range(len(jobs)), [results["variants"][job] for job in jobs], rotation=30, ha="right",
                    fontsize=8)
    axes.set_ylabel("FD (lower is better)")
    axes.set_ylim(0, 1.25 * max(y for points in bars.values() for _, y in points))  # room for the legend
    unit = f"{results['budget_s']:g} s each" if results["mode"] == "time" else _steps_per_method(results)
    axes.set_title(f"{results['dataset']}, {results['set']}: {unit}, {len(results['seeds'])} seed(s)", fontsize=10)
    axes.legend(fontsize=8, frameon=False)
    return save_figure(figure_, path)


def _steps_per_method(results: dict) -> str:
    """'N steps each', or 'IMM N, FM M steps' where the methods train at their own speeds."""
    counts = {}
    for job, overrides in results["overrides"].items():
        counts.setdefault("FM" if is_flow_matching(overrides) else "IMM", results["steps"][job])
    if len(set(counts.values())) == 1:
        return f"{next(iter(counts.values()))} steps each"
    return ", ".join(f"{method} {steps}" for method, steps in counts.items()) + " steps"


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-").replace("--", "-")


def _chunks(items: list, size: int) -> List[list]:
    return [items[index:index + size] for index in range(0, len(items), size)]
