"""Benchmark of the fused interpolant kernels (imm_ext.ops.interpolant_pair, sampler_step).

x, noise of shape (B, 3, 32, 32) float32 (B = 4096 by default) on the CPU. For each op it prints the
median wall time (ms) of repeated calls, after two warm-up calls, timed in rounds (harness.py), of:
  * fused:   the imm_ext op (coefficients per group / per sample, float64);
  * eager:   plain PyTorch with coefficients already expanded per sample, (B, 1, 1, 1) float32;
  * compile: torch.compile of that eager function (dynamic=False);
  * copy:    dst.copy_(src) moving the op's bytes (read 2 write 2 tensors for interpolant_pair,
             read 3 write 1 for sampler_step: copies of the same total bytes), the memory-traffic bound;
  * clone:   clone() of the inputs, as many as the op has outputs: an allocating copy, which pays the
             same first-touch page faults on fresh outputs as every out-of-place op here;
  * add:     torch.add(a, b, out=buf) once per output (a simple elementwise op reading the inputs);
  * kernel:  the fused kernel alone (imm_ext._C) writing into preallocated outputs.
Fresh multi-MiB CPU outputs come from mmap and are page-faulted on first write, which on a small
machine costs more than the arithmetic; so the fused op is compared with clone (both allocate) and
the kernel with copy (neither allocates). Target: fused >= 2x faster than eager, and within 1.5x of
a plain memory copy of the same bytes.

    python bench/interpolant.py [--batch 4096] [--reps 20]
"""
from __future__ import annotations

import argparse

import torch

from imm_ext import _core
from imm_ext.ops import interpolant_pair, sampler_step
from harness import time_in_rounds


def table(title, rows, reps):
    times = time_in_rounds({name: (fn, lambda: None) for name, fn in rows}, "cpu", reps, float("inf"), warmup=2)
    timings = {name: t.median_ms for name, t in times.items()}
    fused = timings["fused"]
    print(f"\n### {title}\n")
    print("| method | median ms | time / fused |")
    print("|---|---:|---:|")
    for name, ms in timings.items():
        print(f"| {name} | {ms:.2f} | {ms / fused:.2f} |")
    print(f"\neager / fused = {timings['eager'] / fused:.2f}x, compile / fused = {timings['compile'] / fused:.2f}x, "
          f"fused / clone = {fused / timings['clone']:.2f}x, kernel / copy = {timings['kernel'] / timings['copy']:.2f}x")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--particles", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    b, m = args.batch, args.particles
    shape = (b, 3, 32, 32)
    x, noise = torch.randn(shape), torch.randn(shape)
    numel = x.numel()
    print(f"CPU, {torch.get_num_threads()} threads, x/noise {shape} float32 "
          f"({x.element_size() * numel / 2**20:.0f} MiB each), torch {torch.__version__}")

    # ---- interpolant_pair
    coef = [torch.rand(b // m, dtype=torch.float64) for _ in range(4)]
    coef_table = torch.stack(coef, 1)
    expanded = [c.repeat_interleave(m).float().view(b, 1, 1, 1) for c in coef]

    def eager_pair(x, noise, at, st, ar, sr):
        return at * x + st * noise, ar * x + sr * noise

    compiled_pair = torch.compile(eager_pair, dynamic=False)
    src2, dst2 = torch.empty(2 * numel), torch.empty(2 * numel)
    buf1, buf2 = torch.empty_like(x), torch.empty_like(x)

    def add_twice():
        torch.add(x, noise, out=buf1)
        torch.add(x, noise, out=buf2)

    with torch.inference_mode():
        table("interpolant_pair (read x, noise; write x_t, x_r)", [
            ("fused", lambda: interpolant_pair(x, noise, *coef, m)),
            ("eager", lambda: eager_pair(x, noise, *expanded)),
            ("compile", lambda: compiled_pair(x, noise, *expanded)),
            ("copy", lambda: dst2.copy_(src2)),
            ("clone", lambda: (x.clone(), noise.clone())),
            ("add", add_twice),
            ("kernel", lambda: _core._C.interpolant_pair(
                0, b, numel // b, m, x.data_ptr(), noise.data_ptr(), coef_table.data_ptr(), buf1.data_ptr(),
                buf2.data_ptr(), "cpu", 0, torch.get_num_threads())),
        ], args.reps)

    # ---- sampler_step with guidance
    g_c, g_u = torch.randn(shape), torch.randn(shape)
    c_skip, c_out = torch.rand(b, dtype=torch.float64), torch.rand(b, dtype=torch.float64)
    skip_e, out_e = c_skip.float().view(b, 1, 1, 1), c_out.float().view(b, 1, 1, 1)
    w = 1.5

    def eager_step(x, g_c, g_u, c_skip, c_out):
        return c_skip * x + c_out * (g_u + w * (g_c - g_u))

    compiled_step = torch.compile(eager_step, dynamic=False)
    src3, dst3 = torch.empty(2 * numel), torch.empty(2 * numel)  # 4 tensors of traffic, as read 3 + write 1

    with torch.inference_mode():
        table("sampler_step with guidance (read x, g_cond, g_uncond; write x_s)", [
            ("fused", lambda: sampler_step(x, g_c, c_skip, c_out, g_uncond=g_u, guidance=w)),
            ("eager", lambda: eager_step(x, g_c, g_u, skip_e, out_e)),
            ("compile", lambda: compiled_step(x, g_c, g_u, skip_e, out_e)),
            ("copy", lambda: dst3.copy_(src3)),
            ("clone", lambda: x.clone()),
            ("add", lambda: torch.add(x, g_c, out=buf1)),
            ("kernel", lambda: _core._C.sampler_step(
                0, 0, b, numel // b, x.data_ptr(), g_c.data_ptr(), g_u.data_ptr(), c_skip.data_ptr(),
                c_out.data_ptr(), w, buf1.data_ptr(), "cpu", 0, torch.get_num_threads())),
        ], args.reps)


if __name__ == "__main__":
    main()
