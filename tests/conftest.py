"""Shared test settings: hypothesis profile, the `cuda` marker, point-set helpers, and the `gpu` fixture
(each op's CUDA kernels on the emulated module and, where there is one, on the GPU)."""
import contextlib

import hypothesis
import pytest
import torch

import imm_ext
from imm_ext.ops.device import emulated_cuda, emulation_available

hypothesis.settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True,
                                     suppress_health_check=[hypothesis.HealthCheck.too_slow])
hypothesis.settings.load_profile("ci")

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_cuda)


# Tolerances per dtype for comparisons against the float64 reference computed on the same inputs.
TOLERANCE = {
    torch.float64: dict(rtol=1e-9, atol=1e-11),
    torch.float32: dict(rtol=2e-4, atol=1e-5),
    torch.bfloat16: dict(rtol=2e-3, atol=1e-4),
    torch.float16: dict(rtol=2e-3, atol=1e-4),
}


# The four dtypes every op takes.
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
# The kernels are compared with the reference evaluated in float64 on the same inputs and rounded
# to the inputs' dtype; both round once, so they may differ by one step of that dtype: for bfloat16
# up to 2^-7 relative (TOLERANCE's 2e-3 covers a float16 step).
ONE_STEP = {**TOLERANCE, torch.bfloat16: dict(rtol=8e-3, atol=1e-4)}


def seeded_data(shape, dtype=torch.float64, seed=0, mean=0.0, std=1.0):
    """Normal values of the given shape, drawn in float64 from `seed`, then rounded to dtype."""
    gen = torch.Generator().manual_seed(seed)
    return (mean + std * torch.randn(*shape, generator=gen, dtype=torch.float64)).to(dtype)


def seeded_times(n, seed=0):
    """n float64 times in [0, 1000) from `seed`."""
    gen = torch.Generator().manual_seed(seed)
    return 1000 * torch.rand(n, generator=gen, dtype=torch.float64)


def norm_inputs(shape, dtype, seed):
    """x (shape) and the per-sample shift and scale (B, C) of norm + modulate."""
    b, c = shape[0], shape[-1]
    return (seeded_data(shape, dtype, seed), seeded_data((b, c), dtype, seed + 1),
            seeded_data((b, c), dtype, seed + 2, std=0.5))


def assert_one_step_close(actual, expected):
    """Same dtype and shape, and values within one rounding step of that dtype (ONE_STEP)."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, **ONE_STEP[expected.dtype])


def value_and_grads(fn, inputs, cotangent):
    """(fn(*inputs), the gradients of its inputs) for one output and its cotangent."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    return out, torch.autograd.grad(out, leaves, cotangent)


def exact_value_and_grads(reference, inputs, cotangent):
    """The reference in float64, value and gradients rounded to the dtypes of the kernel's results."""
    out, grads = value_and_grads(reference, [t.double() for t in inputs], cotangent.double())
    dtype = cotangent.dtype
    return out.to(dtype), [g.to(dtype) for g in grads]


def random_sets(g, n, m, d, dtype=torch.float64, device="cpu", seed=0, batched=True, spread=1.0):
    gen = torch.Generator().manual_seed(seed)
    x = (spread * torch.randn(g, n, d, generator=gen, dtype=torch.float64)).to(device=device, dtype=dtype)
    y = (spread * torch.randn(g, m, d, generator=gen, dtype=torch.float64) + 0.3).to(device=device, dtype=dtype)
    return (x, y) if batched else (x[0], y[0])


def assert_trains_and_reads_every_input(model, x, c_t, c_s, labels, label_count):
    """Gradients reach every parameter, and changing c_t, c_s or the labels changes G(x, c_t, c_s, labels)."""
    model(x, c_t, c_s, labels).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    with torch.no_grad():
        out = model(x, c_t, c_s, labels)
        for changed in (model(x, c_t + 1, c_s, labels), model(x, c_t, c_s + 1, labels),
                        model(x, c_t, c_s, (labels + 1) % label_count)):
            assert not torch.allclose(out, changed)


# A training run that takes a second or two: toy2d, tiny MLP, two micro-batches a step, one thread.
TINY = ["model.options.width=16", "model.options.depth=1", "train.threads=1", "train.steps=6", "train.batch_size=64",
        "train.micro_batch=32", "optimizer.grad_clip=1.0", "optimizer.warmup_steps=3", "optimizer.lr=1e-3",
        "train.ema_warmup=true", "eval.steps=1,2", "eval.num_samples=64", "eval.batch_size=64",
        "log.log_every=2", "log.checkpoint_every=100", "log.progress=false", "log.tensorboard=false",
        "log.grid_size=64", "data.options={n: 2000}"]


def tiny_config(*overrides):
    """toy2d with a tiny MLP, 6 steps of two micro-batches, one thread, quiet logs."""
    from imm_ext.train import apply_overrides, get_preset

    return apply_overrides(get_preset("toy2d"), [*TINY, *overrides])


def wrap_training_loss(monkeypatch, wrap):
    """Every following run (either method) trains with wrap(loss_fn), loss_fn its method's own loss:
    the tests' hook into the steps of a real run."""
    from imm_ext.train import methods

    for cls in methods.TRAINING_METHODS.values():
        monkeypatch.setattr(cls, "loss", lambda self, real=cls.loss: wrap(real(self)))


# ---------------------------------------------------------------------------------------------
# Where the CUDA side of a test runs

FENCE = 16  # NaN elements on each side of every input the emulated kernels read


class Backend:
    """Where a test's CUDA side runs: "emulated-forward", "emulated-reverse" or "cuda"."""

    def __init__(self, name: str):
        self.name, self.real = name, name == "cuda"
        self.fences = []

    def put(self, t: torch.Tensor) -> torch.Tensor:
        """t on this backend: on the GPU, or a CPU copy inside a NaN-fenced buffer."""
        if self.real:
            return t.cuda()
        t = t.detach()
        buffer = torch.full((t.numel() + 2 * FENCE,), float("nan"), dtype=t.dtype)
        buffer[FENCE:FENCE + t.numel()] = t.reshape(-1)
        self.fences.append(buffer)
        return buffer[FENCE:FENCE + t.numel()].view(t.shape)

    @contextlib.contextmanager
    def active(self):
        """Ops called inside run on this backend's kernels."""
        if self.real:
            yield
            return
        with emulated_cuda(self.name.removeprefix("emulated-")):
            yield
        for buffer in self.fences:
            fence = torch.cat([buffer[:FENCE], buffer[-FENCE:]])
            assert torch.isnan(fence).all(), "a kernel wrote outside the buffer it was given"


@pytest.fixture(params=["emulated-forward", "emulated-reverse", pytest.param("cuda", marks=pytest.mark.cuda)])
def gpu(request):
    if request.param == "cuda" and not imm_ext.build_info()["cuda"]:
        pytest.fail("a GPU is present but imm_ext was built without CUDA kernels")
    if request.param != "cuda" and not emulation_available():
        pytest.fail("imm_ext was built without the emulated CUDA kernels: install with IMM_EXT_CUDA_EMULATION=ON "
                    "(the README's test command does)")
    return Backend(request.param)


def value_and_grads_on(backend, fn, inputs, cotangent):
    """fn's outputs and the gradients of its inputs, on "cpu" or on a Backend."""
    put = (lambda t: t.detach().clone()) if backend == "cpu" else backend.put
    leaves = [put(t).requires_grad_() for t in inputs]
    cotangents = [put(c) for c in (cotangent if isinstance(cotangent, tuple) else (cotangent,))]
    with contextlib.nullcontext() if backend == "cpu" else backend.active():
        out = fn(*leaves)
        outs = out if isinstance(out, tuple) else (out,)
        grads = torch.autograd.grad(outs, leaves, cotangents)
    return [t.detach().cpu() for t in (*outs, *grads)]
