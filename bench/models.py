"""Benchmark of imm_ext's DiT layers against the same network written with stock PyTorch layers.

Cases (float32, batch 8 by default): one DiT-S/2 block on (8, 256, 384) tokens, and the whole DiT-S/2
on (8, 4, 32, 32) latents (256 tokens, 1000 classes). Modes: forward (under torch.no_grad) and a
training step without optimizer (forward, loss = mean(G^2), backward into every parameter and, for the
block, into its input). Variants, each eager and under torch.compile (dynamic=False):
  * stock:            DiT(layers="stock") / the block's stock twin: layer_norm + `x * (1 + scale) +
                      shift` + scaled_dot_product_attention + `x + gate * y` (imm_ext.nn.stock);
  * imm_ext:          imm_ext's layers, attention_backend="auto" (what users get: imm_ext's attention
                      on the CPU, SDPA on CUDA);
  * imm_ext+attn:     imm_ext's layers with attention_backend="imm_ext" (imm_ext's attention op; on the
                      CPU the same code as "imm_ext", so the spread between the two shows the noise).
All variants share the same weights (the zero-initialised adaLN layers are given small random values
so every branch computes something) and their outputs are checked against stock. The table gives the
median (and worst) wall time of repeated calls after two warm-up calls (which include compilation), the variants
of one case, mode and execution timed round-robin (so that load changes on a shared machine hit all
alike), and the speedup over stock in the same execution mode (eager or compile). A profile of the imm_ext
training step of the whole model (torch.profiler, self CPU time per op) splits it into matrix
multiplies (mm / addmm / bmm / convolution), attention (ops named *attention*, softmax) and the rest. Results are printed as markdown and written as JSON (with the machine and its
load average) to bench/results/models-<device>-<timestamp>.json.

    python bench/models.py [--device cpu|cuda] [--batch 8] [--reps 5] [--cases block,dit] [--no-compile]

Target: the whole DiT-S/2 training step >= 1.1x faster than stock (eager) on the CPU.
"""
from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path

import torch

from imm_ext.models import DiT
from imm_ext.models.dit import DiTBlock
from harness import load_average, machine_info, synchronize, time_in_rounds

RESULTS_DIR = Path(__file__).resolve().parent / "results"
VARIANTS = {"stock": dict(layers="stock"), "imm_ext": dict(attention_backend="auto"),
            "imm_ext+attn": dict(attention_backend="imm_ext")}


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


def runners(module, inputs, grad_input):
    """forward() and train_step() closures over `module` (eager or compiled)."""
    def forward():
        with torch.no_grad():
            return module(*inputs)

    def train_step():
        first = inputs[0].detach().requires_grad_(grad_input)
        module.zero_grad(set_to_none=True)
        module(first, *inputs[1:]).square().mean().backward()

    return forward, train_step


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
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--cases", default="block,dit")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    machine = machine_info(device)
    where = machine["gpu"] or f"{machine['cpu']}, {machine['cpu_count']} CPUs, {machine['torch_threads']} threads"
    print(f"{args.device}: {where}, torch {torch.__version__}, batch {args.batch}, float32, "
          f"load average {machine['load_average_at_start']}")
    executions = ["eager"] + ([] if args.no_compile else ["compile"])
    rows, checks, profiles = [], [], {}
    for case in args.cases.split(","):
        modules, weights = {}, None
        for variant in VARIANTS:
            module, inputs, grad_input = build_case(case, variant, args.batch, device)
            weights = weights or module.state_dict()
            module.load_state_dict(weights)
            modules[variant] = module
        for execution in executions:
            calls = {}
            for variant, module in modules.items():
                target = module if execution == "eager" else torch.compile(module, dynamic=False)
                calls[variant] = runners(target, inputs, grad_input)
            reference = calls["stock"][0]()
            for variant, (forward, _) in calls.items():
                checks.append(dict(case=case, variant=variant, execution=execution,
                                   max_abs_diff_vs_stock=(forward() - reference).abs().max().item()))
            for index, mode in enumerate(("forward", "train step")):
                timings = time_in_rounds({v: (fns[index], lambda: None) for v, fns in calls.items()}, device,
                                         args.reps, budget_s=float("inf"), warmup=2)
                for variant, times in timings.items():
                    rows.append(dict(case=case, mode=mode, variant=variant, execution=execution, ms=times.median_ms,
                                     worst_ms=times.worst_ms))
                    print(f"  {case:5s} {mode:10s} {variant:12s} {execution:7s} {times.median_ms:9.1f} ms "
                          f"(worst {times.worst_ms:.1f})", flush=True)
        if case == "dit":
            profiles[case] = profile_breakdown(runners(modules["imm_ext"], inputs, grad_input)[1], device)

    print("\n| case | mode | variant | execution | median ms | speedup vs stock |\n|---|---|---|---|---:|---:|")
    for row in rows:
        stock = next(r["ms"] for r in rows if r["variant"] == "stock" and
                     all(r[k] == row[k] for k in ("case", "mode", "execution")))
        row["speedup_vs_stock"] = stock / row["ms"]
        print(f"| {row['case']} | {row['mode']} | {row['variant']} | {row['execution']} | {row['ms']:.1f} | "
              f"{row['speedup_vs_stock']:.2f}x |")
    print("\nagreement with stock in the same execution mode (forward, max |difference|): "
          + ", ".join(f"{c['case']}/{c['variant']}/{c['execution']} {c['max_abs_diff_vs_stock']:.1e}" for c in checks))
    for case, (totals, top) in profiles.items():
        total = sum(totals.values())
        print(f"\nprofile of the imm_ext eager training step ({case}), self time {total:.0f} ms: "
              + ", ".join(f"{k} {v:.0f} ms ({100 * v / total:.0f}%)" for k, v in totals.items()))
        print("top ops: " + ", ".join(f"{name} {ms:.0f} ms" for name, ms in top))
    machine["load_average_at_end"] = load_average()
    RESULTS_DIR.mkdir(exist_ok=True)
    out = args.out or RESULTS_DIR / f"models-{args.device}-{datetime.now():%Y%m%d-%H%M%S}.json"
    profiles = {case: dict(totals=totals, top_ops=top) for case, (totals, top) in profiles.items()}
    report = dict(machine=machine, args={k: str(v) for k, v in vars(args).items()}, rows=rows, agreement=checks,
                  profiles=profiles)
    out.write_text(json.dumps(report, indent=1))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
