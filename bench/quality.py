"""IMM against flow matching at equal training wall time: the study behind the README's Results.

    python bench/quality.py --dataset digits --budgets 120,300,900 --seeds 0,1,2
    python bench/quality.py --dataset fashion-mnist --budgets 600,1800 --seeds 0
    python bench/quality.py --merge A.json B.json            # one study from runs of different seeds
    python bench/quality.py --quick                          # a smoke run (the tests use it)
    python bench/quality.py --ablation particles --budgets 300   # a variant set: see ablation.py

For each seed, IMM and flow matching train side by side with the trainer (`imm-ext train`, the
dataset's preset: same network, data order, loop and machine, one thread each, so both share the load),
each for as many steps as its measured speed fits in the largest budget, checkpointing as it goes.
The checkpoint each method reached at each budget is then scored with the EMA weights: IMM at 1, 2, 4
and 8 steps, flow matching with Euler and Heun at 1 to 100 steps (Heun takes two network evaluations a
step), in the dataset's frozen feature network (Frechet distance and the rest, beside the
real-vs-real floor).

Speeds are measured first (both methods concurrently, briefly) and written to the results; a run given
`--speeds FILE` (an earlier results JSON) reuses them, so the same seeds give the same numbers. With
`--runs-dir` the runs, their checkpoints and the speeds stay in that folder, and the same command run
again continues an interrupted study: finished runs are scored without retraining, unfinished ones
resume from their newest checkpoint.
Writes bench/results/quality-<dataset>-<time>.json (every number, each run's config, the machine, wall
and CPU times) and figures next to it: FD against network evaluations, FD against training time, and
sample grids of IMM at 1 and 2 steps beside flow matching at 2, 8 and 50.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Dict

import torch
from matplotlib.figure import Figure

from imm_ext.health_check import cpu_model
from imm_ext.train.checkpoint import list_checkpoints
from imm_ext.train.evaluation import generate, load_trained_model
from imm_ext.train.plots import save_figure
from ablation import SET_NAMES, run_variant_set
from study_runs import (FM_STEPS, IMM_STEPS, METHODS, measure_speeds, method_overrides, network_evaluations,
                        recorded_path, remember_speeds, remembered_speeds, score, train_together, training_folder)

# ---------------------------------------------------------------------------------------------
# Figures

def _mean_fd(results: dict, budget: str, method: str, sampler: str, steps: str) -> float:
    values = [seed[budget][method][sampler][steps]["fd"] for seed in results["seeds"].values()]
    return sum(values) / len(values)


def figure_fd_against_evaluations(results: dict, path: Path) -> Path:
    figure = Figure(figsize=(7.0, 4.5), dpi=100)
    axes = figure.add_subplot()
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for colour, budget in zip(colours, results["budgets_s"]):
        key = str(budget)
        for method, sampler, style, steps in (("imm", "imm", "-o", IMM_STEPS),
                                              ("flow_matching", "euler", "--s", FM_STEPS),
                                              ("flow_matching", "heun", ":^", FM_STEPS)):
            xs = [network_evaluations(sampler, s) for s in steps]
            ys = [_mean_fd(results, key, method, sampler, str(s)) for s in steps]
            label = f"{'IMM' if method == 'imm' else 'FM ' + sampler} {budget:g} s"
            axes.plot(xs, ys, style, color=colour, markersize=3, label=label)
    floor = results["real_vs_real_fd"]
    axes.axhspan(0, floor, color="0.85", label=f"real vs real ({floor:.2f})")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("network evaluations per sample")
    axes.set_ylabel(f"FD ({results['dataset']} features)")
    axes.set_title(f"{results['dataset']}: IMM vs flow matching at equal training time\n"
                   f"(mean of {len(results['seeds'])} seed(s))", fontsize=10)
    axes.legend(fontsize=7, ncol=2, frameon=False)
    return save_figure(figure, path)


def figure_fd_against_time(results: dict, path: Path) -> Path:
    """Mean FD over seeds at each budget, with bars from the lowest to the highest seed."""
    figure = Figure(figsize=(6.0, 4.0), dpi=100)
    axes = figure.add_subplot()
    budgets = results["budgets_s"]
    for label, method, sampler, steps in (("IMM 1 step", "imm", "imm", "1"), ("IMM 2 steps", "imm", "imm", "2"),
                                          ("FM Euler 50 steps", "flow_matching", "euler", "50"),
                                          ("FM Heun 25 steps (50 NFE)", "flow_matching", "heun", "25")):
        per_seed = [[seed[str(b)][method][sampler][steps]["fd"] for seed in results["seeds"].values()] for b in budgets]
        means = [sum(values) / len(values) for values in per_seed]
        spread = [[m - min(v) for m, v in zip(means, per_seed)], [max(v) - m for m, v in zip(means, per_seed)]]
        axes.errorbar(budgets, means, yerr=spread, fmt="-o", capsize=3, label=label)
    axes.axhline(results["real_vs_real_fd"], color="0.5", linestyle=":", label="real vs real")
    axes.set_xscale("log")
    axes.set_xticks(budgets, [f"{b:g}" for b in budgets])
    axes.minorticks_off()
    axes.set_xlabel("training wall time per method (s, both running at once)")
    axes.set_ylabel("FD")
    axes.set_title(f"{results['dataset']}: FD against training time\n"
                   f"({len(results['seeds'])} seed(s), range as bars)", fontsize=10)
    axes.legend(fontsize=8, frameon=False)
    return save_figure(figure, path)


def _tiled(samples: torch.Tensor, side: int) -> torch.Tensor:
    """(side^2, C, H, W) in [-1, 1] as one (H', W', C) picture in [0, 1], a one-pixel white line between."""
    padded = torch.nn.functional.pad((samples.clamp(-1, 1) + 1) / 2, (0, 1, 0, 1), value=1.0)
    _, channels, height, width = padded.shape
    grid = padded.reshape(side, side, channels, height, width).permute(0, 3, 1, 4, 2)
    return grid.reshape(side * height, side * width, channels)


def sample_grids(checkpoints: Dict[str, Path], path: Path, side: int = 8) -> Path:
    """IMM at 1 and 2 steps beside flow matching (Euler) at 2, 8 and 50, from the same noise."""
    panels = []
    for method, steps_list in (("imm", (1, 2)), ("flow_matching", (2, 8, 50))):
        model, config, info, _ = load_trained_model(checkpoints[method], use_ema=True)
        for steps in steps_list:
            samples, _ = generate(model, config.method, info, steps, side * side, seed=0)
            name = "IMM" if method == "imm" else "FM Euler"
            panels.append((f"{name}, {steps} step{'s' if steps > 1 else ''}", _tiled(samples, side)))
    figure = Figure(figsize=(2.2 * len(panels), 2.5), dpi=100)
    for index, (title, picture) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), index + 1)
        axes.imshow(picture.squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axes.set_title(title, fontsize=9)
        axes.set_axis_off()
    return save_figure(figure, path)


# ---------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="digits", choices=["digits", "fashion-mnist"])
    parser.add_argument("--budgets", help="training wall seconds per method, comma-separated (default 120,300,900; "
                                          "one budget with --ablation, default 300)")
    parser.add_argument("--ablation", choices=sorted(SET_NAMES), help="train and score a set of variants instead")
    parser.add_argument("--variants", help="with --ablation: only these variants (comma-separated slugs, such as "
                                           "imm-unet,fm-unet) and the methods' presets")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--samples", type=int, default=1000, help="generated samples per metric")
    parser.add_argument("--speeds", type=Path, help="reuse the measured speeds of an earlier results JSON")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--runs-dir", type=Path, help="train in this folder and keep the runs, their checkpoints and "
                                                    "scores and the measured speeds (default: a temporary folder); "
                                                    "the same command given it again continues an interrupted "
                                                    "study without retraining or rescoring what finished")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override the dataset's preset in every run (repeatable)")
    parser.add_argument("--merge", nargs="+", type=Path, metavar="RESULTS",
                        help="combine earlier results JSONs of one study (other seeds) into one, with its table and "
                             "figures, instead of training")
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny budgets, one seed, few samples")
    arguments = parser.parse_args(argv)
    if arguments.merge:
        results = merge_results(arguments.merge)
        stem = arguments.out_dir / f"quality-{results['dataset']}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        arguments.out_dir.mkdir(parents=True, exist_ok=True)
        write_results(results, stem)
        return 0
    extra = list(arguments.set)
    if arguments.quick:
        arguments.budgets, arguments.seeds, arguments.samples = "2" if arguments.ablation else "2,4", "0", 200
        extra += ["model.options={patch_size: 4, hidden_size: 16, depth: 1, heads: 2}", "train.batch_size=32"]
    budgets = [float(b) for b in (arguments.budgets or ("300" if arguments.ablation else "120,300,900")).split(",")]
    seeds = [int(s) for s in arguments.seeds.split(",")]
    if arguments.ablation:
        if len(budgets) != 1:
            parser.error("--ablation takes one budget")
        stem = arguments.out_dir / (f"ablation-{arguments.ablation}-{arguments.dataset}-"
                                    f"{datetime.now().strftime('%Y%m%d-%H%M%S')}")
        arguments.out_dir.mkdir(parents=True, exist_ok=True)
        results = run_variant_set(arguments.ablation, arguments.dataset, budgets[0], seeds, arguments.samples,
                                  arguments.speeds, stem, extra, arguments.runs_dir,
                                  only=arguments.variants.split(",") if arguments.variants else None)
        print(f"results: {stem}.json; figure: {results['figure']}\n{results['table']}")
        return 0
    started = time.perf_counter()

    speeds_file = arguments.speeds or remembered_speeds(arguments.runs_dir)
    if speeds_file:
        speeds = json.loads(speeds_file.read_text())["steps_per_s"]
    else:
        timed = {m: [*o, *extra] for m, o in method_overrides(arguments.dataset).items()}
        speeds = measure_speeds(arguments.dataset, timed, 30 if arguments.quick else 200)
        remember_speeds(arguments.runs_dir, speeds)
    steps = {m: {str(b): max(1, int(speeds[m] * b)) for b in budgets} for m in METHODS}
    # Checkpoints at every budget's step (and nothing else kept): the trainer writes every `every` steps.
    every = {m: max(1, min(steps[m].values()) // 4) for m in METHODS}
    targets = {m: {b: s - s % every[m] if s >= every[m] else every[m] for b, s in steps[m].items()} for m in METHODS}

    results = {"dataset": arguments.dataset, "budgets_s": budgets, "steps_per_s": speeds, "steps": targets,
               "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                           "torch": torch.__version__},
               "imm_steps": list(IMM_STEPS), "fm_steps": list(FM_STEPS), "samples": arguments.samples,
               "seeds": {}, "runs": {}, "command": sys.argv}
    with training_folder(arguments.runs_dir) as root:
        for seed in seeds:
            final = {m: max(targets[m].values()) for m in METHODS}
            jobs = {m: [*overrides, f"train.steps={final[m]}", f"log.checkpoint_every={every[m]}", *extra]
                    for m, overrides in method_overrides(arguments.dataset).items()}
            runs = train_together(arguments.dataset, Path(root), jobs, seed)
            results["runs"][str(seed)] = runs
            per_budget = {}
            for budget in map(str, budgets):
                per_budget[budget] = {}
                for method in METHODS:
                    wanted = Path(runs[method]["run_dir"]) / "checkpoints" / f"step-{targets[method][budget]:08d}.pt"
                    per_budget[budget][method] = score(wanted, method, arguments.samples)
            results["seeds"][str(seed)] = per_budget
            if seed == seeds[0]:
                first = {m: list_checkpoints(Path(runs[m]["run_dir"]) / "checkpoints")[-1] for m in METHODS}
                results["config"] = {m: (Path(runs[m]["run_dir"]) / "config.yaml").read_text() for m in METHODS}
                stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
                arguments.out_dir.mkdir(parents=True, exist_ok=True)
                stem = arguments.out_dir / f"quality-{arguments.dataset}-{stamp}"
                sample_grids(first, Path(f"{stem}-samples.png"))
        any_seed = next(iter(results["seeds"].values()))
        last = any_seed[str(budgets[-1])]["imm"]["imm"]["1"]
        results["real_vs_real_fd"] = last.get("real_vs_real.fd", float("nan"))
    results["wall_s"] = time.perf_counter() - started
    results["figures"] = {"samples": recorded_path(Path(f"{stem}-samples.png"))}
    write_results(results, stem)
    return 0


def write_results(results: dict, stem: Path) -> None:
    """<stem>.json with the summary table, and the two FD figures next to it."""
    by_evaluations = figure_fd_against_evaluations(results, Path(f"{stem}-fd-vs-nfe.png"))
    by_time = figure_fd_against_time(results, Path(f"{stem}-fd-vs-time.png"))
    results["figures"] = {"fd_vs_evaluations": recorded_path(by_evaluations), "fd_vs_time": recorded_path(by_time),
                          "samples": results["figures"]["samples"]}
    results["table"] = summary_table(results)
    Path(f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"results: {stem}.json; figures: {', '.join(results['figures'].values())}\n{results['table']}")


def merge_results(paths) -> dict:
    """One study from several results JSONs of it that ran different seeds (the same dataset, budgets,
    steps and sampler settings); the sample grid stays the first file's."""
    parts = [json.loads(Path(path).read_text()) for path in paths]
    merged = {**parts[0], "seeds": {}, "runs": {}, "command": sys.argv, "merged_from": [str(p) for p in paths],
              "wall_s": sum(part["wall_s"] for part in parts)}
    for path, part in zip(paths, parts):
        for key in ("dataset", "budgets_s", "steps", "samples", "imm_steps", "fm_steps", "real_vs_real_fd"):
            if part[key] != parts[0][key]:
                raise SystemExit(f"--merge: {path} differs from {paths[0]} in {key}")
        if set(part["seeds"]) & set(merged["seeds"]):
            raise SystemExit(f"--merge: {path} repeats seed(s) {sorted(set(part['seeds']) & set(merged['seeds']))}")
        merged["seeds"].update(part["seeds"])
        merged["runs"].update(part["runs"])
    return merged


def summary_table(results: dict) -> str:
    """Markdown: per budget, FD of IMM at 1/2/4/8 steps and of flow matching's best at 50 evaluations
    (the better of Euler 50 and Heun 25, per seed), mean over seeds with the range; then the ratios."""
    def cell(values):
        mean = sum(values) / len(values)
        return f"{mean:.2f}" if len(values) == 1 else f"{mean:.2f} ({min(values):.2f}-{max(values):.2f})"

    rows = ["| budget | IMM 1 | IMM 2 | IMM 4 | IMM 8 | FM best at 50 NFE | IMM 2 / FM | IMM 1 / FM |",
            "|---|---|---|---|---|---|---|---|"]
    for budget in results["budgets_s"]:
        seeds = [seed[str(budget)] for seed in results["seeds"].values()]
        imm = {steps: [seed["imm"]["imm"][steps]["fd"] for seed in seeds] for steps in ("1", "2", "4", "8")}
        best = [min(seed["flow_matching"]["euler"]["50"]["fd"], seed["flow_matching"]["heun"]["25"]["fd"])
                for seed in seeds]
        ratios = [cell([a / b for a, b in zip(imm[steps], best)]) for steps in ("2", "1")]
        rows.append(f"| {budget:g} s | " + " | ".join(cell(imm[s]) for s in ("1", "2", "4", "8"))
                    + f" | {cell(best)} | {ratios[0]} | {ratios[1]} |")
    rows.append(f"\nreal vs real FD {results['real_vs_real_fd']:.2f}; {len(results['seeds'])} seed(s), "
                f"{results['samples']} samples per score")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
