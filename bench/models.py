"""Benchmark of imm_ext's DiT layers against the same network written with stock PyTorch layers.

Cases: one DiT-S/2 block on (B, 256, 384) tokens, and the whole DiT-S/2 on (B, 4, 32, 32) latents (256
tokens, 1000 classes), at each batch B given, in float32 or under bfloat16 autocast. Modes: the forward
(under torch.no_grad) and a training step without optimizer (forward, loss = mean(G^2), backward into
every parameter and, for the block, into its input), with fresh gradients (zero_grad's default: each
.grad a new tensor, so its memory is newly allocated and first touched) or accumulated into the
existing .grad. Variants, each eager and under torch.compile (dynamic=False):
  * stock:            DiT(layers="stock") / the block's stock twin: layer_norm + `x * (1 + scale) +
                      shift` + scaled_dot_product_attention + `x + gate * y` (imm_ext.nn.stock);
  * imm_ext:          imm_ext's layers, attention_backend="auto" (what users get: imm_ext's attention
                      on the CPU, SDPA on CUDA);
  * imm_ext+attn:     imm_ext's layers with attention_backend="imm_ext" (imm_ext's attention op; on the
                      CPU the same code as "imm_ext", so the spread between the two shows the noise).
All variants share the same weights (the zero-initialised adaLN layers are given small random values
so every branch computes something) and their outputs are checked against stock. The table gives the
median and the worst wall time of repeated calls after two warm-up calls (which include compilation),
the variants of one setting, mode and execution timed round-robin (so that load changes on a shared
machine hit all alike), and the speedups over stock in the same execution mode (eager or compile). A
profile of the whole model's training step, stock's and imm_ext's, eager and compiled (torch.profiler,
self CPU time per op), splits it into matrix multiplies (mm / addmm / bmm / convolution), attention (ops
named *attention*, softmax) and the rest: the same matrix multiplies run on both sides, so they bound the
speedup that fusing the rest can bring (the "ceiling": stock's median step over imm_ext's with only its
matrix multiplies' and attention's share of the profile left). Results are printed as markdown and
written as JSON (every call's time, the machine and its load average) to
bench/results/models-<device>-<timestamp>.json.

    python bench/models.py [--device cpu|cuda] [--batch 8,32] [--precision float32,bf16] [--reps 5]
                           [--cases block,dit] [--modes ...] [--variants stock,imm_ext] [--no-compile]
                           [--keep-freed-memory]

Target: the whole DiT-S/2 training step >= 1.15x faster than stock eager and >= 1.05x compiled on the CPU.
"""
from __future__ import annotations

import argparse
import itertools
import json
from datetime import datetime
from pathlib import Path

import torch

from imm_ext.models import DiT
from imm_ext.models.dit import DiTBlock
from imm_ext.process_memory import keep_freed_memory
from harness import KEEP_FREED_MEMORY, load_average, machine_info, synchronize, time_in_rounds

RESULTS_DIR = Path(__file__).resolve().parent / "results"
VARIANTS = {"stock": dict(layers="stock"), "imm_ext": dict(attention_backend="auto"),
            "imm_ext+attn": dict(attention_backend="imm_ext")}
MODES = ("forward", "train step (fresh grads)", "train step (accumulated grads)")
PRECISIONS = ("float32", "bf16")


def perturbed(module, seed=0):
    """`module` with its zero-initialised adaLN layers set to small random values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "modulation" in name or name.startswith("final."):
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
    return module


def build_case(case, variant, batch, device):
    """(module, inputs as a tuple, whether the first input needs a gradient in the training step)."""
    gen = torch.Generator().manual_seed(1)
    if case == "block":
        module = DiTBlock(384, 6, 1536, "layer", False, 1e-6, VARIANTS[variant].get("attention_backend", "auto"),
                          VARIANTS[variant].get("layers", "imm_ext"))
        inputs = (torch.randn(batch, 256, 384, generator=gen), torch.randn(batch, 384, generator=gen))
        grad_input = True
    else:
        module = DiT.from_preset("S/2", input_size=32, in_channels=4, num_classes=1000, **VARIANTS[variant])
        inputs = (torch.randn(batch, 4, 32, 32, generator=gen), 1000 * torch.rand(batch, generator=gen),
                  1000 * torch.rand(batch, generator=gen), torch.randint(0, 1001, (batch,), generator=gen))
        grad_input = False
    return perturbed(module).to(device), tuple(t.to(device) for t in inputs), grad_input


def runners(module, inputs, grad_input, precision, device):
    """{mode: closure} over `module` (eager or compiled): the forward, and the training step with fresh
    gradients (zero_grad's default: every .grad a new tensor) or accumulated into the existing ones."""
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def forward():
        with torch.no_grad(), autocast:
            return module(*inputs)

    def train_step(set_to_none):
        def step():
            first = inputs[0].detach().requires_grad_(grad_input)
            if set_to_none:
                module.zero_grad(set_to_none=True)
            with autocast:
                loss = module(first, *inputs[1:]).float().square().mean()
            loss.backward()
        return step

    return {"forward": forward, "train step (fresh grads)": train_step(True),
            "train step (accumulated grads)": train_step(False)}


def categorize(name):
    if any(key in name.lower() for key in ("attention", "softmax")):  # the ops and their autograd nodes
        return "attention"
    if name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm") or "convolution" in name:
        return "matmul"
    return "rest"


def profile_breakdown(train_step, device):
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    train_step()
    with torch.profiler.profile(activities=activities) as prof:
        train_step()
        synchronize(device)
    totals = {"matmul": 0.0, "attention": 0.0, "rest": 0.0}
    attribute = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for event in prof.key_averages():
        totals[categorize(event.key)] += getattr(event, attribute) / 1e3
    top = sorted(prof.key_averages(), key=lambda e: getattr(e, attribute), reverse=True)[:8]
    return totals, [(e.key, getattr(e, attribute) / 1e3) for e in top]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", default="8", help="batch sizes, comma-separated")
    parser.add_argument("--precision", default="float32", help="float32 and/or bf16 (autocast), comma-separated")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated, of: " + ", ".join(MODES))
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated; stock is always timed")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--cases", default="block,dit")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--keep-freed-memory", action="store_true", help=KEEP_FREED_MEMORY)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.keep_freed_memory:
        keep_freed_memory()
    modes = chosen(args.modes, MODES, "mode")
    variants = ["stock", *[v for v in chosen(args.variants, VARIANTS, "variant") if v != "stock"]]
    machine = machine_info(device)
    where = machine["gpu"] or f"{machine['cpu']}, {machine['cpu_count']} CPUs, {machine['torch_threads']} threads"
    print(f"{args.device}: {where}, torch {torch.__version__}, load average {machine['load_average_at_start']}")
    executions = ["eager"] + ([] if args.no_compile else ["compile"])
    rows, checks, profiles = [], [], {}
    for case, batch, precision in itertools.product(args.cases.split(","), [int(b) for b in args.batch.split(",")],
                                                    chosen(args.precision, PRECISIONS, "precision")):
        setting = dict(case=case, batch=batch, precision=precision)
        modules, weights = {}, None
        for variant in variants:
            module, inputs, grad_input = build_case(case, variant, batch, device)
            weights = weights or module.state_dict()
            module.load_state_dict(weights)
            modules[variant] = module
        for execution in executions:
            calls = {}
            for variant, module in modules.items():
                target = module if execution == "eager" else torch.compile(module, dynamic=False)
                calls[variant] = runners(target, inputs, grad_input, precision, device)
            reference = calls["stock"]["forward"]().float()
            for variant, fns in calls.items():
                checks.append(dict(**setting, variant=variant, execution=execution,
                                   max_abs_diff_vs_stock=(fns["forward"]().float() - reference).abs().max().item()))
            for mode in modes:
                timings = time_in_rounds({v: (fns[mode], lambda: None) for v, fns in calls.items()}, device,
                                         args.reps, budget_s=float("inf"), warmup=2)
                for variant, times in timings.items():
                    rows.append(dict(**setting, mode=mode, variant=variant, execution=execution, ms=times.median_ms,
                                     worst_ms=times.worst_ms, calls_ms=times.calls_ms))
                    print(f"  {case:5s} b{batch:<3d} {precision:8s} {mode:30s} {variant:12s} {execution:7s} "
                          f"{times.median_ms:9.1f} ms (worst {times.worst_ms:.1f})", flush=True)
            if case == "dit":  # where the step's time goes, stock's beside imm_ext's: the matmuls bound the speedup
                for variant in ("stock", "imm_ext"):
                    if variant in calls:
                        profiles[(f"{case} batch {batch} {precision}", execution, variant)] = profile_breakdown(
                            calls[variant]["train step (fresh grads)"], device)

    print("\n| case | batch | precision | mode | variant | execution | median ms | worst ms | speedup vs stock "
          "(median) | (worst) |\n|---|---:|---|---|---|---|---:|---:|---:|---:|")
    for row in rows:
        stock = next(r for r in rows if r["variant"] == "stock" and
                     all(r[k] == row[k] for k in ("case", "batch", "precision", "mode", "execution")))
        row["speedup_vs_stock"] = stock["ms"] / row["ms"]
        row["worst_speedup_vs_stock"] = stock["worst_ms"] / row["worst_ms"]
        print(f"| {row['case']} | {row['batch']} | {row['precision']} | {row['mode']} | {row['variant']} | "
              f"{row['execution']} | {row['ms']:.1f} | {row['worst_ms']:.1f} | {row['speedup_vs_stock']:.2f}x | "
              f"{row['worst_speedup_vs_stock']:.2f}x |")
    print("\nagreement with stock in the same execution mode (forward, max |difference|): "
          + ", ".join(f"{c['case']}/b{c['batch']}/{c['precision']}/{c['variant']}/{c['execution']} "
                      f"{c['max_abs_diff_vs_stock']:.1e}" for c in checks))
    for (setting, execution, variant), (totals, top) in profiles.items():
        total = sum(totals.values())
        print(f"\nprofile of the {execution} training step ({variant}, {setting}), self time {total:.0f} ms: "
              + ", ".join(f"{k} {v:.0f} ms ({100 * v / total:.0f}%)" for k, v in totals.items()))
        print("top ops: " + ", ".join(f"{op} {ms:.0f} ms" for op, ms in top))
    fresh = {(f"{r['case']} batch {r['batch']} {r['precision']}", r["execution"], r["variant"]): r["ms"]
             for r in rows if r["mode"] == "train step (fresh grads)"}
    ceilings = {f"{execution}, {setting}": ceiling
                for (setting, execution), ceiling in speedup_ceilings(profiles, fresh).items()}
    for name, ceiling in ceilings.items():
        print(f"ceiling of the speedup ({name}, fresh gradients): {ceiling:.2f}x, stock's step "
              f"over imm_ext's matrix multiplies and attention alone (everything else taking no time)")
    machine["load_average_at_end"] = load_average()
    RESULTS_DIR.mkdir(exist_ok=True)
    out = args.out or RESULTS_DIR / f"models-{args.device}-{datetime.now():%Y%m%d-%H%M%S}.json"
    profiles = {f"{variant}, {execution}, {setting}": dict(totals=totals, top_ops=top)
                for (setting, execution, variant), (totals, top) in profiles.items()}
    report = dict(machine=machine, args={k: str(v) for k, v in vars(args).items()}, rows=rows, agreement=checks,
                  profiles=profiles, speedup_ceilings=ceilings)
    out.write_text(json.dumps(report, indent=1))
    print(f"\nwritten to {out}")


def speedup_ceilings(profiles: dict, medians: dict) -> dict:
    """(setting, execution) -> the speedup over stock that fusing the rest could reach at most, both sides
    running the same matrix multiplies: stock's median step (fresh gradients) over imm_ext's median step
    scaled by the share of matrix multiplies and attention in imm_ext's profile. medians: {(setting,
    execution, variant): ms}. The shares, not a single profiled step's times, which swing more."""
    ceilings = {}
    for (setting, execution, variant), (totals, _) in profiles.items():
        if variant != "imm_ext" or (setting, execution, "stock") not in medians:
            continue
        share = (totals["matmul"] + totals["attention"]) / sum(totals.values())
        ceilings[(setting, execution)] = (medians[setting, execution, "stock"]
                                          / (medians[setting, execution, "imm_ext"] * share))
    return ceilings


def chosen(text: str, known, what: str) -> list:
    names = text.split(",")
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SystemExit(f"unknown {what} {', '.join(unknown)}: choose from {', '.join(known)}")
    return names


if __name__ == "__main__":
    main()
