"""Shared test settings: hypothesis profile, the `cuda` marker, and point-set helpers."""
import hypothesis
import pytest
import torch

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
