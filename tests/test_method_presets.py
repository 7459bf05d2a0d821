"""The named presets build a consistent parametrisation, loss and sampler with Table 5's values."""
import pytest
import torch

from imm_ext.method import PRESETS, IMMLoss, IMMParametrization, IMMSampler


class Zero(torch.nn.Module):
    def forward(self, x, c_t, c_s, labels=None):
        return torch.zeros_like(x)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_and_runs(name):
    preset = PRESETS[name]
    model = preset.parametrization(Zero(), null_label=10)
    loss_fn = preset.loss()
    assert isinstance(model, IMMParametrization) and isinstance(loss_fn, IMMLoss)
    x = torch.randn(2 * preset.particles, 3, 4, 4)
    labels = torch.zeros(x.shape[0], dtype=torch.long)
    loss, diagnostics = loss_fn(model, x, labels, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    sampler = preset.sampler(model)
    assert isinstance(sampler, IMMSampler) and sampler.steps == preset.sampling_steps
    samples = sampler.sample((2, 3, 4, 4), labels=labels[:2] if preset.guidance else None, seed=0)
    assert samples.shape == (2, 3, 4, 4) and torch.isfinite(samples).all()


def test_table5_values():
    cifar, imagenet, fp16 = PRESETS["cifar10"], PRESETS["imagenet256"], PRESETS["imagenet256-fp16"]
    assert (cifar.f_type, cifar.k, cifar.eps_t, cifar.T, cifar.a, cifar.b) == ("simple_edm", 15, 0.006, 0.994, 1.0, 5.0)
    assert (imagenet.f_type, imagenet.k, imagenet.eps_t, imagenet.b, imagenet.label_dropout) == ("euler_fm", 12, 0.0, 4.0, 0.1)
    assert (fp16.time_embedding, fp16.delta, fp16.a) == ("stride", 1e-4, 2.0)
    times = cifar.sampler(cifar.parametrization(Zero())).times
    torch.testing.assert_close(times, torch.tensor([0.994, 1.4 / 2.4, 0.006], dtype=torch.float64))
    assert cifar.sampler(cifar.parametrization(Zero()), steps=4).steps == 4
