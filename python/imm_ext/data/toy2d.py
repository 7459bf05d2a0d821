"""The 2-D toy distributions: samplers, exact log-densities where they exist, and their modes.

Each toy is defined in its native coordinates (data-and-metrics.md: the 8 Gaussians on a circle of
radius 4 with std 0.5, both divided by sqrt 2; the 5x5 grid of Gaussians at integer points with std
0.05; the checkerboard on 8 of the 16 squares of [-4, 4]^2; moons, circles, swiss roll, two spirals
and a pinwheel) and then centred and rescaled by exact constants so that the overall std, the root
mean square of the two coordinates' stds, is `std` (0.5 by default: IMM's sigma_d, imm-method.md §8).
`std=None` keeps the native coordinates. Every mean and std below is derived in closed form, so
the rescaling, and with it the densities, are exact and independent of the sample size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

#---------------------------------------------------------------------------------------------------
# Native samplers (float64). Each takes (n, generator) and returns (n, 2).


def _eight_gaussians(n, g):
    angle = 2 * math.pi * torch.randint(8, (n,), generator=g, dtype=torch.float64) / 8
    centres = 4 * torch.stack([angle.cos(), angle.sin()], 1)
    return (centres + 0.5 * torch.randn(n, 2, generator=g, dtype=torch.float64)) / math.sqrt(2)


def _grid_gaussians(n, g):
    centres = torch.randint(-2, 3, (n, 2), generator=g).double()
    return centres + 0.05 * torch.randn(n, 2, generator=g, dtype=torch.float64)


def _checkerboard(n, g):
    square = _CHECKER_SQUARES[torch.randint(len(_CHECKER_SQUARES), (n,), generator=g)]
    return square + 2 * torch.rand(n, 2, generator=g, dtype=torch.float64) - 1


def _moons(n, g, noise=0.1):
    theta = math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    lower = torch.rand(n, generator=g) < 0.5
    upper_moon = torch.stack([theta.cos(), theta.sin()], 1)
    lower_moon = torch.stack([1 - theta.cos(), 0.5 - theta.sin()], 1)
    points = torch.where(lower[:, None], lower_moon, upper_moon)
    return points + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)


def _circles(n, g, inner_radius=0.5, noise=0.05):
    angle = 2 * math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    radius = torch.where(torch.rand(n, generator=g) < 0.5, inner_radius, 1.0).double()
    points = radius[:, None] * torch.stack([angle.cos(), angle.sin()], 1)
    return points + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)


_SWISS_T0, _SWISS_T1 = 1.5 * math.pi, 4.5 * math.pi  # t uniform on [1.5 pi, 4.5 pi], as sklearn's roll


def _swiss_roll(n, g, noise=0.5):
    t = _SWISS_T0 + (_SWISS_T1 - _SWISS_T0) * torch.rand(n, generator=g, dtype=torch.float64)
    return t[:, None] * torch.stack([t.cos(), t.sin()], 1) + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)


_SPIRAL_TURN = 3 * math.pi  # each arm winds 540 degrees


def _two_spirals(n, g, noise=0.3):
    s = _SPIRAL_TURN * torch.rand(n, generator=g, dtype=torch.float64).sqrt()  # uniform along the area
    arm = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).double()
    points = arm[:, None] * s[:, None] * torch.stack([-s.cos(), s.sin()], 1)
    return points + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)


def _pinwheel(n, g, arms=5, radial_std=0.3, tangential_std=0.1, rate=0.25):
    radial = 1 + radial_std * torch.randn(n, generator=g, dtype=torch.float64)
    tangential = tangential_std * torch.randn(n, generator=g, dtype=torch.float64)
    angle = 2 * math.pi * torch.randint(arms, (n,), generator=g).double() / arms + rate * radial.exp()
    cos, sin = angle.cos(), angle.sin()
    return torch.stack([cos * radial - sin * tangential, sin * radial + cos * tangential], 1)


# Centres of the checkerboard's 8 data squares (side 2): (i + j) even on the 4x4 grid of [-4, 4]^2.
_CHECKER_SQUARES = torch.tensor([[-3 + 2 * i, -3 + 2 * j] for i in range(4) for j in range(4) if (i + j) % 2 == 0],
                                dtype=torch.float64)

#---------------------------------------------------------------------------------------------------
# Exact native means and overall stds (root mean square of the per-coordinate stds).


def _swiss_roll_moments(noise=0.5):
    a, b = _SWISS_T0, _SWISS_T1
    # E[t cos t] and E[t sin t] for t ~ U(a, b), by parts: int t cos t = t sin t + cos t; int t sin t = sin t - t cos t.
    mean_x = ((b * math.sin(b) + math.cos(b)) - (a * math.sin(a) + math.cos(a))) / (b - a)
    mean_y = ((math.sin(b) - b * math.cos(b)) - (math.sin(a) - a * math.cos(a))) / (b - a)
    second = (b ** 3 - a ** 3) / (3 * (b - a))  # E[t^2] = E[x^2 + y^2] before noise
    return (mean_x, mean_y), math.sqrt((second - mean_x ** 2 - mean_y ** 2) / 2 + noise ** 2)


def _moons_moments(noise=0.1):
    # x: E = 1/2, E[x^2] = (1/2 + 3/2)/2 = 1; y: E = 1/4, E[y^2] = (1/2 + 3/4 - 2/pi)/2.
    var_x = 1 - 0.25
    var_y = (0.5 + 0.75 - 2 / math.pi) / 2 - 0.0625
    return (0.5, 0.25), math.sqrt((var_x + var_y) / 2 + noise ** 2)


@dataclass(frozen=True)
class Toy:
    sampler: Callable
    mean: tuple  # native mean
    std: float  # native overall std
    component_std: Optional[float] = None  # Gaussian mixtures: the std of each component (native)


TOYS = {
    "8gaussians": Toy(_eight_gaussians, (0.0, 0.0), math.sqrt(4 + 0.125), 0.5 / math.sqrt(2)),
    "25gaussians": Toy(_grid_gaussians, (0.0, 0.0), math.sqrt(2 + 0.05 ** 2), 0.05),
    "checkerboard": Toy(_checkerboard, (0.0, 0.0), math.sqrt(16 / 3)),
    "moons": Toy(_moons, *_moons_moments()),
    "swissroll": Toy(_swiss_roll, *_swiss_roll_moments()),
    "circles": Toy(_circles, (0.0, 0.0), math.sqrt((1 + 0.25) / 4 + 0.05 ** 2)),
    "2spirals": Toy(_two_spirals, (0.0, 0.0), math.sqrt(_SPIRAL_TURN ** 2 / 4 + 0.3 ** 2)),
    "pinwheel": Toy(_pinwheel, (0.0, 0.0), math.sqrt((1 + 0.3 ** 2 + 0.1 ** 2) / 2)),
}
NAMES = tuple(TOYS)
EXACT_DENSITY = ("8gaussians", "25gaussians", "checkerboard")

#---------------------------------------------------------------------------------------------------
# Public API


def _toy(name: str) -> Toy:
    if not isinstance(name, str) or name not in TOYS:
        raise ValueError(f"name must be one of {', '.join(map(repr, NAMES))}; got {name!r}")
    return TOYS[name]


def _scale(toy: Toy, std: Optional[float]) -> float:
    """The factor from native to returned coordinates."""
    if std is None:
        return 1.0
    if isinstance(std, bool) or not isinstance(std, (int, float)) or not math.isfinite(std) or std <= 0:
        raise ValueError(f"std must be a positive finite float or None; got {std!r}")
    return std / toy.std


def _native_mean(toy: Toy, std: Optional[float]) -> torch.Tensor:
    return torch.tensor(toy.mean if std is not None else (0.0, 0.0), dtype=torch.float64)


def sample(name: str, n: int, generator: Optional[torch.Generator] = None, *, std: Optional[float] = 0.5,
           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """n i.i.d. points (n, 2) of the toy `name`, with overall std `std` (None: native coordinates)."""
    toy = _toy(name)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1; got {n!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None; got {type(generator).__name__}")
    scale = _scale(toy, std)
    native = toy.sampler(n, generator)
    return ((native - _native_mean(toy, std)) * scale).to(dtype)


def mode_centers(name: str, *, std: Optional[float] = 0.5) -> Optional[torch.Tensor]:
    """The (K, 2) mode centres in the coordinates `sample` returns: the 8 or 25 Gaussian means or the
    centres of the checkerboard's 8 squares; None for toys without separate modes."""
    toy = _toy(name)
    scale = _scale(toy, std)
    if name == "8gaussians":
        angle = 2 * math.pi * torch.arange(8, dtype=torch.float64) / 8
        native = 4 * torch.stack([angle.cos(), angle.sin()], 1) / math.sqrt(2)
    elif name == "25gaussians":
        grid = torch.arange(-2, 3, dtype=torch.float64)
        native = torch.cartesian_prod(grid, grid)
    elif name == "checkerboard":
        native = _CHECKER_SQUARES.clone()
    else:
        return None
    return (native - _native_mean(toy, std)) * scale


def mode_index(name: str, x: torch.Tensor, *, std: Optional[float] = 0.5) -> torch.Tensor:
    """For each point of x (N, 2), the index of the mode it lies in, or -1: within 3 component stds of a
    Gaussian's mean (mixtures), or inside a data square (checkerboard). ValueError for toys without modes."""
    centres = mode_centers(name, std=std)
    if centres is None:
        raise ValueError(f"the toy {name!r} has no separate modes; modes exist for 8gaussians, 25gaussians, checkerboard")
    x = _check_points(x)
    toy = TOYS[name]
    scale = _scale(toy, std)
    if toy.component_std is not None:
        distance, nearest = torch.cdist(x, centres).min(1)
        inside = distance <= 3 * toy.component_std * scale
    else:  # checkerboard: the square (half side 1 natively) in the sup norm
        distance, nearest = (x[:, None, :] - centres[None]).abs().amax(-1).min(1)
        inside = distance <= scale
    return torch.where(inside, nearest, torch.full_like(nearest, -1))


def log_density(name: str, x: torch.Tensor, *, std: Optional[float] = 0.5) -> torch.Tensor:
    """Exact log-density (float64, shape (N,)) of the points x (N, 2) under the toy `name`, in the
    coordinates `sample` returns (the change of variables adds -2 log(scale)). Exists for 8gaussians,
    25gaussians (isotropic Gaussian mixtures with equal weights) and checkerboard (uniform on its 8
    squares, -inf outside); ValueError for the other toys, whose densities have no closed form."""
    toy = _toy(name)
    if name not in EXACT_DENSITY:
        raise ValueError(f"the toy {name!r} has no closed-form density; exact densities exist for {', '.join(EXACT_DENSITY)}")
    x = _check_points(x)
    scale = _scale(toy, std)
    centres = mode_centers(name, std=std)
    if toy.component_std is not None:
        sigma = toy.component_std * scale
        squared = torch.cdist(x, centres).square()
        return (torch.logsumexp(-squared / (2 * sigma ** 2), 1) - math.log(len(centres))
                - math.log(2 * math.pi * sigma ** 2))
    area = len(centres) * (2 * scale) ** 2
    inside = mode_index(name, x, std=std) >= 0
    return torch.where(inside, torch.full_like(x[:, 0], -math.log(area)), torch.full_like(x[:, 0], -math.inf))


def _check_points(x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor; got {type(x).__name__}")
    if x.ndim != 2 or x.shape[1] != 2 or not x.is_floating_point():
        raise ValueError(f"x must be a floating (N, 2) tensor; got {tuple(x.shape)} {x.dtype}")
    return x.detach().to("cpu", torch.float64)
