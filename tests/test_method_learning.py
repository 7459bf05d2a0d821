"""A short IMM run on 2-D data learns: 1- and 2-step samples end far closer to the data (energy
distance) than at initialisation (measured: 0.030 -> 0.006 for both, real-vs-real 0.0014). Tiny MLP,
1500 Adam steps, about 8 s on a 2-core CPU."""
import math

import torch

import imm_ext
from imm_ext.method import IMMLoss, IMMParametrization, IMMSampler, PriorWeighting, RMapping, sampling_times


def ring_of_gaussians(n, generator, modes=8, radius=0.7, spread=0.05):
    """8 Gaussians on a circle, overall std about 0.5 (sigma_data)."""
    angle = 2 * math.pi * torch.randint(modes, (n,), generator=generator) / modes
    centres = radius * torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    return centres + spread * torch.randn(n, 2, generator=generator)


class TimeConditionedMLP(torch.nn.Module):
    def __init__(self, hidden=128, frequencies=8):
        super().__init__()
        self.register_buffer("frequencies", torch.pi * 2.0 ** torch.arange(frequencies) / 2)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(2 + 4 * frequencies, hidden), torch.nn.SiLU(),
            torch.nn.Linear(hidden, hidden), torch.nn.SiLU(),
            torch.nn.Linear(hidden, hidden), torch.nn.SiLU(),
            torch.nn.Linear(hidden, 2))

    def embed(self, c):
        angles = (c.float() / 1000)[:, None] * self.frequencies
        return torch.cat([angles.sin(), angles.cos()], 1)

    def forward(self, x, c_t, c_s, labels=None):
        return self.net(torch.cat([x, self.embed(c_t), self.embed(c_s)], 1))


def energy_distance(model, steps, data, seed):
    sampler = IMMSampler(model, sampling_times(steps, "fm", eps_t=0.0, T=0.994))
    samples = sampler.sample((data.shape[0], 2), seed=seed).float()
    return float(imm_ext.mmd_loss(samples, data, kernel="energy"))


def test_imm_learns_a_ring_of_gaussians():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = IMMParametrization(TimeConditionedMLP(), schedule="fm", f_type="euler_fm")
    loss_fn = IMMLoss(RMapping("fm", k=10, eps_t=0.0, T=0.994), PriorWeighting("fm", a=1, b=4), particles=4)
    held_out = ring_of_gaussians(2000, torch.Generator().manual_seed(1))
    before = {steps: energy_distance(model, steps, held_out, seed=2) for steps in (1, 2)}

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(1500):
        loss, _ = loss_fn(model, ring_of_gaussians(512, generator), generator=generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    after = {steps: energy_distance(model, steps, held_out, seed=2) for steps in (1, 2)}
    for steps in (1, 2):
        assert after[steps] < 0.3 * before[steps], (steps, before, after)
