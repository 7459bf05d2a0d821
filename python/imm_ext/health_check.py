"""`imm-ext doctor`: how this installation was built, what it sees, and whether every op gives the right
numbers on every backend it has (after `pip install`, the way `python -m xformers.info` is used).

    imm-ext doctor              # tables; exit status 1 when any check fails
    imm-ext doctor --json       # the same report for machines
    python -c "import imm_ext; imm_ext.doctor()"

Backends: the CPU kernels of every instruction-set build this processor runs (the narrower builds each
in a process of their own: a process picks its build once), every CUDA device, and the emulated CUDA
kernels where the build has them. Every op runs forward and backward on small random inputs in each
dtype; its outputs and input gradients are compared with the op's pure-PyTorch reference evaluated in
float64 on the same inputs, as max |error| / max |reference|. A speed probe then times each op's
forward and backward against its reference at a moderate size (float32, on the CPU and each GPU).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch

from . import _core
from . import ops
from .ops.device import emulated_cuda, emulation_available

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Largest scaled error that passes: a few roundings of the dtype (the reference sees the same inputs).
TOLERANCE = {"float64": 1e-10, "float32": 1e-4, "bfloat16": 3e-2, "float16": 5e-3}
ISAS = ("baseline", "avx2", "avx512")


@dataclass(frozen=True)
class OpCheck:
    """One op: inputs (float64 tensors, their dtype applied later), the op and its reference."""

    name: str
    inputs: Callable[[torch.Generator, int], List[torch.Tensor]]  # (generator, scale: 1 small, 8 probe)
    op: Callable[..., torch.Tensor]
    reference: Callable[..., torch.Tensor]
    differentiable: Sequence[int]  # which inputs get gradients
    cast: Sequence[int] = ()  # inputs that keep float64 (others take the checked dtype)


def _randn(generator, *shape):
    return torch.randn(*shape, generator=generator, dtype=torch.float64)


def _positive(generator, *shape):
    return torch.rand(*shape, generator=generator, dtype=torch.float64) + 0.5


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _both(out):
    return torch.cat([o.reshape(-1) for o in out]) if isinstance(out, tuple) else out


CHECKS = [
    OpCheck("mmd_loss", lambda g, s: [_randn(g, 4 * s, 8, 64), _randn(g, 4 * s, 8, 64)],
            lambda x, y: ops.mmd_loss(x, y, distance_scale="dim", reduction="none"),
            lambda x, y: ops.mmd_loss_reference(x, y, distance_scale="dim", reduction="none"), (0, 1)),
    OpCheck("pairwise_kernel", lambda g, s: [_randn(g, 2, 40 * s, 3), _randn(g, 2, 33 * s, 3)],
            lambda x, y: ops.pairwise_kernel(x, y, kernel="gaussian", bandwidth=[0.5, 2.0]),
            lambda x, y: ops.pairwise_kernel_reference(x, y, kernel="gaussian", bandwidth=[0.5, 2.0]), (0, 1)),
    OpCheck("attention", lambda g, s: [_randn(g, 2, 2 * s, 33 * s, 64) for _ in range(3)],
            ops.attention, ops.attention_reference, (0, 1, 2)),
    OpCheck("norm_modulate(layer)", lambda g, s: [_randn(g, 2 * s, 40 * s, 96), _randn(g, 2 * s, 96),
                                                  _randn(g, 2 * s, 96)],
            lambda x, a, b: ops.norm_modulate(x, a, b, norm="layer"),
            lambda x, a, b: ops.norm_modulate_reference(x, a, b, norm="layer"), (0, 1, 2)),
    OpCheck("norm_modulate(rms)", lambda g, s: [_randn(g, 2 * s, 40 * s, 96), _randn(g, 2 * s, 96),
                                                _randn(g, 2 * s, 96)],
            lambda x, a, b: ops.norm_modulate(x, a, b, norm="rms"),
            lambda x, a, b: ops.norm_modulate_reference(x, a, b, norm="rms"), (0, 1, 2)),
    OpCheck("gate_residual", lambda g, s: [_randn(g, 2 * s, 40 * s, 96), _randn(g, 2 * s, 96),
                                           _randn(g, 2 * s, 40 * s, 96)],
            ops.gate_residual, ops.gate_residual_reference, (0, 1, 2)),
    OpCheck("gelu_tanh", lambda g, s: [3 * _randn(g, 4 * s, 257 * s)], ops.gelu_tanh, ops.gelu_tanh_reference, (0,)),
    OpCheck("qk_norm", lambda g, s: [_randn(g, 2 * s, 33 * s, 3 * 6 * 64), 1 + _randn(g, 64), 1 + _randn(g, 64)],
            lambda *a: _both(ops.qk_norm(*a, heads=6)), lambda *a: _both(ops.qk_norm_reference(*a, heads=6)),
            (0, 1, 2)),
    OpCheck("timestep_embedding_pair", lambda g, s: [1000 * _positive(g, 33 * s), 1000 * _positive(g, 33 * s)],
            lambda a, b, dtype=torch.float32: _both(ops.timestep_embedding_pair(a, b, 64, dtype=dtype)),
            lambda a, b, dtype=torch.float32: _both(ops.timestep_embedding_pair_reference(a, b, 64, dtype=dtype)),
            (0, 1), cast=(0, 1)),
    OpCheck("interpolant_pair", lambda g, s: [_randn(g, 8 * s, 3, 5, 5), _randn(g, 8 * s, 3, 5, 5),
                                              *(_positive(g, 2 * s) for _ in range(4))],
            lambda *a: _both(ops.interpolant_pair(*a, 4)),
            lambda *a: _both(ops.interpolant_pair_reference(*a, 4)), (0, 1), cast=(2, 3, 4, 5)),
    OpCheck("sampler_step(guided)", lambda g, s: [_randn(g, 4 * s, 3, 5, 5), _randn(g, 4 * s, 3, 5, 5),
                                                  _positive(g, 4 * s), _positive(g, 4 * s),
                                                  _randn(g, 4 * s, 3, 5, 5)],
            lambda x, gc, a, b, gu: ops.sampler_step(x, gc, a, b, g_uncond=gu, guidance=1.5),
            lambda x, gc, a, b, gu: ops.sampler_step_reference(x, gc, a, b, g_uncond=gu, guidance=1.5), (),
            cast=(2, 3)),
]


# ---------------------------------------------------------------------------------------------
# Parity

def _prepare(check: OpCheck, dtype: torch.dtype, device: str, scale: int, seed: int = 0) -> List[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tensors = check.inputs(generator, scale)
    return [t.to(device=device, dtype=torch.float64 if i in check.cast else dtype) for i, t in enumerate(tensors)]


def _dtype_argument(check: OpCheck, dtype: torch.dtype) -> dict:
    return {"dtype": dtype} if check.name == "timestep_embedding_pair" else {}


def _values_and_grads(fn, inputs, differentiable, cotangent_seed, **options) -> List[torch.Tensor]:
    leaves = [t.detach().clone().requires_grad_(i in differentiable) for i, t in enumerate(inputs)]
    out = fn(*leaves, **options)
    results = [out.detach()]
    wanted = [leaves[i] for i in differentiable]
    if wanted:
        generator = torch.Generator().manual_seed(cotangent_seed)
        weight = torch.randn(out.shape, generator=generator, dtype=torch.float64).to(out.device, out.dtype)
        results += [g.detach() for g in torch.autograd.grad((out * weight).sum(), wanted)]
    return results


def scaled_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want| (want's scale: 1 when it is all zero); inf for a non-finite got."""
    got, want = got.double().cpu(), want.double().cpu()
    if not torch.isfinite(got).all():
        return float("inf")
    return float((got - want).abs().max()) / max(float(want.abs().max()), 1e-30) if want.numel() else 0.0


def parity(check: OpCheck, dtype_name: str, device: str, emulated: bool = False) -> Dict[str, object]:
    dtype = DTYPES[dtype_name]
    inputs = _prepare(check, dtype, device, scale=1)
    options = _dtype_argument(check, dtype)
    with emulated_cuda() if emulated else contextlib.nullcontext():
        got = _values_and_grads(check.op, inputs, check.differentiable, 1, **options)
    want = _values_and_grads(check.reference, [t.cpu().double() for t in inputs], check.differentiable, 1,
                             **options)
    error = max(scaled_error(g, w) for g, w in zip(got, want))
    return {"op": check.name, "dtype": dtype_name, "max_error": error, "tolerance": TOLERANCE[dtype_name],
            "ok": error <= TOLERANCE[dtype_name]}


def speed(check: OpCheck, device: str, repeats: int = 5) -> Dict[str, object]:
    """Median forward + backward time of the op and of its reference, float32, at a moderate size."""
    inputs = _prepare(check, torch.float32, device, scale=8)
    times = {}
    for name, fn in (("kernel_ms", check.op), ("reference_ms", check.reference)):
        runs = []
        for _ in range(repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            started = time.perf_counter()
            _values_and_grads(fn, inputs, check.differentiable, 2)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            runs.append(1000 * (time.perf_counter() - started))
        times[name] = sorted(runs)[len(runs) // 2]
    return {"op": check.name, **times, "speedup": times["reference_ms"] / max(times["kernel_ms"], 1e-9)}


def check_backend(device: str, emulated: bool = False, with_speed: bool = True) -> Dict[str, object]:
    results = [parity(check, dtype, device, emulated) for check in CHECKS for dtype in DTYPES]
    report = {"checks": results, "ok": all(r["ok"] for r in results)}
    if with_speed and not emulated:
        report["speed"] = [speed(check, device) for check in CHECKS]
    return report


# ---------------------------------------------------------------------------------------------
# Build, devices, backends

def cpu_model() -> str:
    """The processor's model name (from /proc/cpuinfo on Linux)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def architecture_support(capability: int, built_archs: str) -> tuple:
    """(usable, note) for a GPU of compute capability `capability` (e.g. 90) and the build's archs
    ("80,90"): CMake's "XY" is sm_XY code, which runs on X.Y and later minors of X, plus compute_XY PTX,
    which the driver compiles for newer GPUs at first use."""
    archs = [int(a) for a in built_archs.replace(";", ",").split(",") if a.strip().isdigit()]
    native = [a for a in archs if a // 10 == capability // 10 and a <= capability]
    jit = [a for a in archs if a <= capability]
    if not archs:
        return False, "imm_ext was built without CUDA kernels: the ops fall back to PyTorch"
    if native:
        return True, f"runs the sm_{max(native)} code of this build"
    if jit:
        return True, f"no sm_{capability // 10}x code in this build: PTX of compute_{max(jit)} is compiled at first use"
    return False, (f"sm_{capability} is older than every architecture of this build ({built_archs}): reinstall "
                   f"with IMM_EXT_CUDA_ARCHS={capability}")


def _cuda_devices(built_archs: str) -> List[Dict[str, object]]:
    devices = []
    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        major, minor = torch.cuda.get_device_capability(index)
        usable, note = architecture_support(10 * major + minor, built_archs)
        devices.append({"index": index, "name": torch.cuda.get_device_name(index), "capability": f"{major}.{minor}",
                        "memory_gib": round(torch.cuda.get_device_properties(index).total_memory / 2 ** 30, 1),
                        "usable": usable, "note": note})
    return devices


def build_report() -> Dict[str, object]:
    info = _core.build_info()
    return {"imm_ext": info["version"], "compiler": info["compiler"], "cuda_kernels": info["cuda"],
            "cuda_version": info["cuda_version"], "cuda_archs": info["cuda_archs"], "cpu_isa": info["cpu_isa"],
            "openmp_threads": info["openmp_threads"], "emulated_cuda": emulation_available(),
            "torch": torch.__version__, "torch_cuda": torch.version.cuda, "python": platform.python_version(),
            "cpu": cpu_model()}


def _narrower_isa(isa: str, with_speed: bool) -> Dict[str, object]:
    """check_backend("cpu") in a process whose CPU build is capped at `isa`."""
    command = [sys.executable, "-m", "imm_ext.health_check", "--backend", "cpu", "--json"] + ([] if with_speed else
                                                                                          ["--no-speed"])
    run = subprocess.run(command, env=dict(os.environ, IMM_EXT_CPU_ISA=isa), capture_output=True, text=True)
    if run.returncode not in (0, 1):
        return {"checks": [], "ok": False, "error": run.stderr.strip().splitlines()[-1:] or ["failed"]}
    return json.loads(run.stdout)


def doctor(print_report: bool = True, with_speed: bool = True) -> Dict[str, object]:
    """The whole report (build, devices, every backend's checks); printed as tables unless told not to."""
    build = build_report()
    devices = _cuda_devices(build["cuda_archs"] if build["cuda_kernels"] else "")
    backends = {}
    chosen = build["cpu_isa"]
    for isa in ISAS[:ISAS.index(chosen) + 1] if chosen in ISAS else (chosen,):
        name = f"cpu ({isa})"
        backends[name] = check_backend("cpu", with_speed=with_speed) if isa == chosen else _narrower_isa(
            isa, with_speed)
    for device in devices:
        if device["usable"]:
            backends[f"cuda:{device['index']} ({device['name']})"] = check_backend(f"cuda:{device['index']}",
                                                                                   with_speed=with_speed)
    if build["emulated_cuda"]:
        backends["cuda emulated on the cpu"] = check_backend("cpu", emulated=True, with_speed=False)
    ok = all(b["ok"] for b in backends.values()) and all(d["usable"] for d in devices if build["cuda_kernels"])
    report = {"build": build, "cuda_devices": devices, "backends": backends, "ok": ok}
    if print_report:
        print(format_report(report))
    return report


def format_report(report: Dict[str, object]) -> str:
    lines = ["imm_ext doctor", "", "build"]
    lines += [f"  {key:15s} {value}" for key, value in report["build"].items()]
    lines += ["", "CUDA devices"] + ([f"  cuda:{d['index']} {d['name']} (sm {d['capability']}, {d['memory_gib']} GiB): "
                                      f"{d['note']}" for d in report["cuda_devices"]] or ["  none"])
    for backend, result in report["backends"].items():
        lines += ["", f"{backend}: {'PASS' if result['ok'] else 'FAIL'}"]
        if "error" in result:
            lines.append(f"  could not run: {result['error']}")
        lines.append(f"  {'op':26s}" + "".join(f"{name:>20s}" for name in DTYPES))
        for op in dict.fromkeys(r["op"] for r in result["checks"]):
            row = {r["dtype"]: r for r in result["checks"] if r["op"] == op}
            lines.append(f"  {op:26s}" + "".join(f"{row[d]['max_error']:12.1e} {'PASS' if row[d]['ok'] else 'FAIL':>7s}"
                                                   for d in DTYPES))
        if result.get("speed"):
            lines.append(f"  {'speed probe (float32)':26s}{'kernel ms':>12s}{'reference ms':>14s}{'speedup':>9s}")
            for r in result["speed"]:
                lines.append(f"  {r['op']:26s}{r['kernel_ms']:12.2f}{r['reference_ms']:14.2f}{r['speedup']:8.1f}x")
    lines += ["", "all checks passed" if report["ok"] else "SOME CHECKS FAILED"]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="imm-ext doctor", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--no-speed", action="store_true", help="skip the speed probe")
    parser.add_argument("--backend", help="check one backend only: cpu, cuda or cuda:N")
    arguments = parser.parse_args(argv)
    if arguments.backend:
        report = check_backend(arguments.backend, with_speed=not arguments.no_speed)
    else:
        report = doctor(print_report=not arguments.json, with_speed=not arguments.no_speed)
    if arguments.json:
        print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
