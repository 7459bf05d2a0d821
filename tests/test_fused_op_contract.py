"""The op contract of every op declared with ops/fused_op.py, from one table of specs: the eager route
(autograd.Function) and the custom-op route give the same values and gradients bit for bit; gradcheck
(and gradgradcheck where the op is twice differentiable); torch.library.opcheck, which also traces the
registered autograd and the backward's fake; torch.compile(fullgraph=True) against eager; integer and
wrong-device tensors refused by name on both routes; every per-ISA CPU build against the widest; and
the emulated CUDA kernels (and the GPU's, where there is one) against the CPU's. Each op's own test
file keeps what is specific to it: its numerics against the reference, edge values and the rest of bad
input."""
from dataclasses import dataclass
from typing import Callable

import pytest
import torch

import imm_ext
from imm_ext.ops import activation_ops, attention_ops, embedding_ops, norm_ops, qk_norm_ops, residual_ops
from imm_ext.ops.fused_op import FusedOp

from conftest import TOLERANCE, value_and_grads_on


@dataclass(frozen=True)
class Spec:
    fused: FusedOp
    shapes: tuple  # the shapes of the differentiable tensor inputs
    options: Callable  # dtype -> the non-tensor arguments after them
    twice_differentiable: bool = True
    float64_inputs: tuple = ()  # indices of inputs that are float64 whatever the dtype


SPECS = {
    "gelu_tanh": Spec(activation_ops._gelu_tanh, ((3, 17),), lambda dtype: ()),
    "norm_modulate-layer": Spec(norm_ops._norm_modulate, ((2, 5, 6), (2, 6), (2, 6)),
                                lambda dtype: (False, 1e-6)),
    "norm_modulate-rms": Spec(norm_ops._norm_modulate, ((2, 5, 6), (2, 6), (2, 6)), lambda dtype: (True, 1e-6)),
    "gate_residual": Spec(residual_ops._gate_residual, ((2, 5, 6), (2, 6), (2, 5, 6)), lambda dtype: ()),
    "timestep_embedding": Spec(embedding_ops._timestep_embedding, ((4,),), lambda dtype: (9, 1e4, dtype),
                               float64_inputs=(0,)),
    "qk_norm": Spec(qk_norm_ops._qk_norm, ((2, 5, 3 * 2 * 4), (4,), (4,)), lambda dtype: (2, 1e-6)),
    "attention": Spec(attention_ops._attention, ((1, 2, 5, 4), (1, 2, 7, 4), (1, 2, 7, 4)), lambda dtype: (0.5,),
                      twice_differentiable=False),
}


def test_every_fused_op_has_a_spec():
    declared = [value for module in (activation_ops, attention_ops, embedding_ops, norm_ops, qk_norm_ops, residual_ops)
                for value in vars(module).values() if isinstance(value, FusedOp)]
    covered = [spec.fused for spec in SPECS.values()]
    assert declared and all(any(op is seen for seen in covered) for op in declared)


def _inputs(spec: Spec, dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    made = []
    for i, shape in enumerate(spec.shapes):
        t = torch.randn(shape, generator=gen, dtype=torch.float64)
        made.append(t.abs() * 10 if i in spec.float64_inputs else t.to(dtype))
    return tuple(made)


def _first_output(out):
    return out[0] if isinstance(out, tuple) else out


def _route(spec: Spec, dtype: torch.dtype, route: str = "eager"):
    """tensors -> the op's (first, differentiable) output, through its eager route or its custom op."""
    call = spec.fused if route == "eager" else spec.fused.op
    return lambda *tensors: _first_output(call(*tensors, *spec.options(dtype)))


def _cotangent(spec: Spec, dtype: torch.dtype, inputs):
    with torch.no_grad():
        out = _route(spec, dtype)(*inputs)
    return torch.randn(out.shape, generator=torch.Generator().manual_seed(99), dtype=torch.float64).to(out.dtype)


@pytest.mark.parametrize("name", SPECS)
def test_the_custom_op_route_gives_the_eager_routes_values_and_gradients(name):
    spec = SPECS[name]
    inputs = _inputs(spec, torch.float32)
    cotangent = _cotangent(spec, torch.float32, inputs)
    eager = value_and_grads_on("cpu", _route(spec, torch.float32), inputs, cotangent)
    op = value_and_grads_on("cpu", _route(spec, torch.float32, "op"), inputs, cotangent)
    assert all(torch.equal(a, b) for a, b in zip(eager, op))


@pytest.mark.parametrize("name", SPECS)
def test_gradcheck(name):
    spec = SPECS[name]
    inputs = tuple(t.requires_grad_() for t in _inputs(spec, torch.float64, seed=1))
    assert torch.autograd.gradcheck(_route(spec, torch.float64), inputs)
    if spec.twice_differentiable:
        assert torch.autograd.gradgradcheck(_route(spec, torch.float64), inputs, fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", SPECS)
def test_opcheck(name, dtype):
    spec = SPECS[name]
    inputs = tuple(t.requires_grad_() for t in _inputs(spec, dtype, seed=2))
    torch.library.opcheck(spec.fused.op, (*inputs, *spec.options(dtype)))


@pytest.mark.parametrize("name", SPECS)
def test_torch_compile_fullgraph_matches_eager(name):
    spec = SPECS[name]
    inputs = _inputs(spec, torch.float32, seed=3)
    cotangent = _cotangent(spec, torch.float32, inputs)
    torch._dynamo.reset()
    compiled = value_and_grads_on("cpu", torch.compile(_route(spec, torch.float32), fullgraph=True), inputs, cotangent)
    for a, b in zip(compiled, value_and_grads_on("cpu", _route(spec, torch.float32), inputs, cotangent)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", SPECS)
def test_cuda_kernels_match_the_cpu_kernels(gpu, name):
    spec = SPECS[name]
    inputs = _inputs(spec, torch.float32, seed=4)
    cotangent = _cotangent(spec, torch.float32, inputs)
    cpu = value_and_grads_on("cpu", _route(spec, torch.float32), inputs, cotangent)
    for a, b in zip(value_and_grads_on(gpu, _route(spec, torch.float32), inputs, cotangent), cpu):
        torch.testing.assert_close(a, b, **TOLERANCE[torch.float32])


def _argument_names(spec: Spec) -> list:
    return [argument.name for argument in spec.fused.op._opoverload._schema.arguments]


@pytest.mark.parametrize("route", ["eager", "op"])
@pytest.mark.parametrize("name", SPECS)
def test_bad_tensors_are_refused_by_name(name, route):
    """Every tensor input, on both routes (the custom op is what direct torch.ops.imm_ext calls reach):
    an integer tensor is a TypeError and a tensor on another device a ValueError, each naming it."""
    spec = SPECS[name]
    call = spec.fused if route == "eager" else spec.fused.op
    names = _argument_names(spec)
    for index in range(len(spec.shapes)):
        inputs = list(_inputs(spec, torch.float32))
        inputs[index] = inputs[index].long()
        with pytest.raises(TypeError, match=names[index]):
            call(*inputs, *spec.options(torch.float32))
        if index > 0:
            inputs = list(_inputs(spec, torch.float32))
            inputs[index] = inputs[index].to("meta")
            with pytest.raises(ValueError, match=f"{names[index]} must be on the device"):
                call(*inputs, *spec.options(torch.float32))


_EVERY_BUILD_SCRIPT = """
import sys
import torch
sys.path.insert(0, {tests!r})
from conftest import value_and_grads_on
from test_fused_op_contract import SPECS, _cotangent, _inputs, _route
results = {{}}
for name, spec in SPECS.items():
    inputs = _inputs(spec, torch.float32, seed=5)
    results[name] = value_and_grads_on("cpu", _route(spec, torch.float32), inputs, _cotangent(spec, torch.float32, inputs))
torch.save(results, sys.argv[1])
import imm_ext
print(imm_ext.build_info()["cpu_isa"])
"""


@pytest.mark.parametrize("isa", ["baseline", "avx2"])
def test_every_instruction_set_build_agrees(isa, tmp_path):
    """The per-ISA CPU builds (IMM_EXT_CPU_ISA caps the choice) give the widest build's values and
    gradients for every op, up to float32 rounding (vector widths change the order of sums)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = _EVERY_BUILD_SCRIPT.format(tests=str(Path(__file__).resolve().parent))
    out = tmp_path / "results.pt"
    run = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "IMM_EXT_CPU_ISA": isa})
    assert run.returncode == 0, run.stderr[-3000:]
    order = ["baseline", "avx2", "avx512"]
    widest = imm_ext.build_info()["cpu_isa"]
    assert run.stdout.split()[-1] == order[min(order.index(isa), order.index(widest))]
    theirs = torch.load(out)
    for name, spec in SPECS.items():
        inputs = _inputs(spec, torch.float32, seed=5)
        ours = value_and_grads_on("cpu", _route(spec, torch.float32), inputs, _cotangent(spec, torch.float32, inputs))
        for a, b in zip(theirs[name], ours):
            torch.testing.assert_close(a, b, **TOLERANCE[torch.float32])
