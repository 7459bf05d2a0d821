"""Few-step sampling (imm-method.md §4): the time grids of §4.3, pushforward and restart against the exact
Gaussian jump (the marginals must come out right), determinism, guidance pass-through, the float64 state
under inference mode, and bad input."""
import math

import pytest
import torch

from imm_ext.method import IMMParametrization, IMMSampler, sampling_times

SIGMA_DATA = 0.5
MU = torch.tensor([1.0, -0.5, 0.2], dtype=torch.float64)
VARIANCE = torch.tensor([0.3, 0.05, 0.6], dtype=torch.float64)


class ExactGaussianJump:
    """The exact marginal-preserving f_{s,t} for data N(MU, diag(VARIANCE)) under "fm": it standardises x_t
    under q_t and rescales to q_s, x_s = m_s + sqrt(V_s / V_t) (x_t - m_t), with m_u = alpha_u MU and
    V_u = alpha_u^2 VARIANCE + sigma_u^2 sigma_d^2. Records what the sampler passes it."""

    def __init__(self):
        self.calls = []

    @staticmethod
    def moments(u):
        alpha, sigma = 1.0 - u, u
        return alpha * MU, alpha ** 2 * VARIANCE + sigma ** 2 * SIGMA_DATA ** 2

    def __call__(self, x_t, t, s, labels=None, guidance=None):
        self.calls.append(dict(t=float(t), s=float(s), dtype=x_t.dtype, t_dtype=t.dtype, labels=labels,
                               guidance=guidance, inference=torch.is_inference_mode_enabled(),
                               grad=torch.is_grad_enabled()))
        (m_t, v_t), (m_s, v_s) = self.moments(t), self.moments(s)
        return m_s + torch.sqrt(v_s / v_t) * (x_t - m_t)


def expected_moments(method, times):
    """Mean and variance per dimension of the sampler's output with ExactGaussianJump, propagated exactly.

    The start is N(0, sigma_d^2) at T, not q_T (alpha_T = 0.006 and sigma_T^2 = 0.988 sigma_d^2 in q_T), so
    the output is off the data law by about 1% in variance; the maps are linear, so the law is Gaussian
    and its moments follow in closed form."""
    mean, var = torch.zeros(3, dtype=torch.float64), torch.full((3,), SIGMA_DATA ** 2, dtype=torch.float64)
    eps_t = float(times[-1])
    for i in range(len(times) - 1):
        t_now, t_next = float(times[i]), float(times[i + 1])
        target = t_next if method == "pushforward" else eps_t
        (m_t, v_t), (m_s, v_s) = ExactGaussianJump.moments(t_now), ExactGaussianJump.moments(target)
        mean, var = m_s + torch.sqrt(v_s / v_t) * (mean - m_t), v_s / v_t * var
        if method == "restart" and i < len(times) - 2:
            mean, var = (1 - t_next) * mean, (1 - t_next) ** 2 * var + t_next ** 2 * SIGMA_DATA ** 2
    return mean, var


def zero_network(x, c_t, c_s, labels):
    return torch.zeros_like(x)


# ---------------------------------------------------------------- sampling_times


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_uniform_times_run_from_T_to_eps_t(steps):
    times = sampling_times(steps, discretization="uniform", eps_t=0.006, T=0.994)
    assert times.dtype == torch.float64 and times.shape == (steps + 1,)
    assert float(times[0]) == 0.994 and float(times[-1]) == 0.006
    assert bool((times[1:] < times[:-1]).all())
    assert torch.allclose(times[1:] - times[:-1], torch.full((steps,), -0.988 / steps, dtype=torch.float64))


def test_edm_times_match_the_spec_for_imagenet_8_steps():
    # §4.3 lists t = .994, .985, .957, .861, .564, .147, .010, 1e-4, 0 for 8 steps: 9 points, i.e. steps + 1
    # with both endpoints, which matches sampling_times. The entries are printed to 3 decimals except the
    # eighth: eta_max (1/8)^7 = 7.9e-5 gives t = 7.9e-5, which is "1e-4" rounded to 4 decimals.
    times = sampling_times(8, "fm", "edm", eps_t=0.0, T=0.994)
    assert times.shape == (9,)
    printed = [0.994, 0.985, 0.957, 0.861, 0.564, 0.147, 0.010]
    assert [round(float(t), 3) for t in times[:7]] == printed
    assert round(float(times[7]), 4) == 1e-4
    assert float(times[0]) == 0.994 and float(times[8]) == 0.0
    assert bool((times[1:] < times[:-1]).all())


def test_edm_times_follow_rho_7_in_eta_for_vp_cosine():
    times = sampling_times(5, "vp_cosine", "edm", eps_t=0.002, T=0.996)
    eta = torch.tan(math.pi * times / 2)
    root_max, root_min = math.tan(math.pi * 0.996 / 2) ** (1 / 7), math.tan(math.pi * 0.002 / 2) ** (1 / 7)
    expected = torch.tensor([(root_max + i / 5 * (root_min - root_max)) ** 7 for i in range(6)], dtype=torch.float64)
    assert torch.allclose(eta, expected, rtol=1e-9)
    assert float(times[-1]) == 0.002


def test_custom_times_cifar_two_step():
    times = sampling_times(2, "fm", "custom", eps_t=0.006, T=0.994, mid_eta=[1.4])
    assert times.dtype == torch.float64
    assert times.tolist() == pytest.approx([0.994, 1.4 / 2.4, 0.006], abs=1e-15)
    assert float(times[1]) == pytest.approx(0.58333333, abs=1e-8)


def test_custom_times_several_and_one_step():
    times = sampling_times(3, "fm", "custom", T=0.994, mid_eta=[3.0, 0.25])
    assert times.tolist() == pytest.approx([0.994, 0.75, 0.2, 0.0], abs=1e-15)
    assert sampling_times(1, discretization="custom", mid_eta=[]).tolist() == [0.994, 0.0]


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=0), "steps"), (dict(steps=2.0), "steps"), (dict(steps=True), "steps"),
    (dict(steps=2, schedule="ve"), "schedule"), (dict(steps=2, discretization="karras"), "discretization"),
    (dict(steps=2, eps_t=-0.1), "eps_t"), (dict(steps=2, T=1.5), "T"), (dict(steps=2, eps_t=0.5, T=0.5), "eps_t"),
    (dict(steps=2, T=float("nan")), "T"), (dict(steps=2, discretization="edm", T=1.0), "T"),
    (dict(steps=2, mid_eta=[1.4]), "mid_eta"), (dict(steps=2, discretization="custom"), "mid_eta"),
    (dict(steps=2, discretization="custom", mid_eta=[1.4, 1.0]), "mid_eta"),
    (dict(steps=2, discretization="custom", mid_eta=[-1.0]), "mid_eta"),
    (dict(steps=2, discretization="custom", mid_eta=[float("inf")]), "mid_eta"),
    (dict(steps=2, discretization="custom", mid_eta=[500.0]), "mid_eta"),
    (dict(steps=3, discretization="custom", mid_eta=[1.0, 2.0]), "mid_eta"),
    (dict(steps=2, discretization="custom", mid_eta=[0.01], eps_t=0.1), "mid_eta"),
])
def test_sampling_times_rejects_bad_input(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        sampling_times(**kwargs)


# ---------------------------------------------------------------- the samplers on exact Gaussian jumps


@pytest.mark.parametrize("method", ["pushforward", "restart"])
@pytest.mark.parametrize("steps", [1, 2, 4])
def test_exact_gaussian_jump_reproduces_the_data_marginals(method, steps):
    n = 20000
    times = sampling_times(steps, "fm", "uniform", eps_t=0.0, T=0.994)
    samples = IMMSampler(ExactGaussianJump(), times, method=method).sample((n, 3), seed=steps)
    assert samples.shape == (n, 3) and samples.dtype == torch.float64
    mean, var = samples.mean(0), samples.var(0)
    expected_mean, expected_var = expected_moments(method, times)
    mean_error, var_error = torch.sqrt(expected_var / n), expected_var * math.sqrt(2 / (n - 1))
    # The exact law of this sampler, tightly: 4.5 standard errors.
    assert bool(((mean - expected_mean).abs() < 4.5 * mean_error).all()), (mean, expected_mean)
    assert bool(((var - expected_var).abs() < 4.5 * var_error).all()), (var, expected_var)
    # The data law itself, within a few standard errors (the start at T instead of 1 costs ~1% in variance).
    assert bool(((mean - MU).abs() < 5 * mean_error).all()), (mean, MU)
    assert bool(((var - VARIANCE).abs() < 5 * var_error).all()), (var, VARIANCE)


@pytest.mark.parametrize("method", ["pushforward", "restart"])
def test_the_model_is_called_at_the_algorithm_times(method):
    model = ExactGaussianJump()
    times = sampling_times(3, eps_t=0.006)
    IMMSampler(model, times, method=method).sample((4, 3), seed=0)
    t = times.tolist()
    targets = t[1:] if method == "pushforward" else [t[-1]] * 3
    assert [(call["t"], call["s"]) for call in model.calls] == list(zip(t[:-1], targets))


def test_the_start_is_sigma_data_scaled_noise_at_T():
    # Euler-FM with a zero network is the identity jump, so the output is the starting noise itself.
    model = IMMParametrization(zero_network, f_type="euler_fm")
    samples = IMMSampler(model, sampling_times(4)).sample((8, 2, 3), seed=7)
    noise = torch.randn((8, 2, 3), generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    assert torch.equal(samples, SIGMA_DATA * noise)


# ---------------------------------------------------------------- determinism, trajectory, guidance, dtype


@pytest.mark.parametrize("method", ["pushforward", "restart"])
def test_same_seed_same_samples_and_different_seed_different(method):
    sampler = IMMSampler(ExactGaussianJump(), sampling_times(3), method=method)
    first, again, other = (sampler.sample((16, 3), seed=seed) for seed in (1, 1, 2))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    from_generator = sampler.sample((16, 3), generator=torch.Generator().manual_seed(1))
    assert torch.equal(first, from_generator)


@pytest.mark.parametrize("method", ["pushforward", "restart"])
def test_an_external_loop_of_steps_reproduces_sample(method):
    """step() is the loop body of sample(): the same noise in the same order gives the same samples."""
    sampler = IMMSampler(ExactGaussianJump(), sampling_times(4), method=method)
    generator = torch.Generator().manual_seed(5)
    with torch.inference_mode():
        x = SIGMA_DATA * torch.randn((8, 3), generator=generator, dtype=torch.float64)
        for i in range(sampler.steps):
            fresh = torch.randn((8, 3), generator=generator, dtype=torch.float64) if (
                method == "restart" and i < sampler.steps - 1) else None
            x = sampler.step(x, i, noise=fresh)
    assert torch.equal(x, sampler.sample((8, 3), seed=5))


def test_step_refuses_an_index_or_noise_that_does_not_fit():
    x = torch.zeros(2, 3, dtype=torch.float64)
    pushforward = IMMSampler(ExactGaussianJump(), sampling_times(2))
    with pytest.raises(ValueError, match=r"i must lie in \[0, 2\)"):
        pushforward.step(x, 2)
    restart = IMMSampler(ExactGaussianJump(), sampling_times(2), method="restart")
    with pytest.raises(ValueError, match="needs fresh noise"):
        restart.step(x, 0)
    with pytest.raises(ValueError, match="takes no noise"):
        restart.step(x, 1, noise=torch.zeros_like(x))


@pytest.mark.parametrize("method", ["pushforward", "restart"])
def test_trajectory_has_one_state_per_step_and_ends_at_the_output(method):
    samples, trajectory = IMMSampler(ExactGaussianJump(), sampling_times(4), method=method).sample(
        (8, 3), seed=3, return_trajectory=True)
    assert len(trajectory) == 4
    assert torch.equal(trajectory[-1], samples)
    assert all(state.shape == (8, 3) and state.dtype == torch.float64 for state in trajectory)


def test_guidance_and_labels_reach_the_model():
    model = ExactGaussianJump()
    labels = torch.tensor([0, 3, 1, 2])
    IMMSampler(model, sampling_times(2), guidance=1.5).sample((4, 3), labels=labels, seed=0)
    assert [call["guidance"] for call in model.calls] == [1.5, 1.5]
    assert all(torch.equal(call["labels"], labels) for call in model.calls)


def test_guidance_runs_through_imm_parametrization():
    seen = []

    def network(x, c_t, c_s, labels):
        seen.append(labels.clone())
        return torch.zeros_like(x)

    model = IMMParametrization(network, null_label=10)
    IMMSampler(model, sampling_times(1), guidance=1.5).sample((2, 3), labels=torch.tensor([4, 5]), seed=0)
    assert seen[0].tolist() == [4, 5, 10, 10]


def test_guidance_without_labels_raises_naming_labels():
    with pytest.raises(ValueError, match="labels"):
        IMMSampler(ExactGaussianJump(), sampling_times(2), guidance=1.5).sample((4, 3), seed=0)


def test_state_is_float64_by_default_under_inference_mode():
    model = ExactGaussianJump()
    samples = IMMSampler(model, sampling_times(2)).sample((4, 3), seed=0)
    assert samples.dtype == torch.float64 and not samples.requires_grad
    assert all(call["dtype"] == torch.float64 and call["t_dtype"] == torch.float64 for call in model.calls)
    assert all(call["inference"] and not call["grad"] for call in model.calls)
    samples32 = IMMSampler(model, sampling_times(2)).sample((4, 3), seed=0, dtype=torch.float32)
    assert samples32.dtype == torch.float32


def test_sampler_takes_sigma_data_and_schedule_from_imm_parametrization():
    model = IMMParametrization(zero_network, schedule="vp_cosine", f_type="simple_edm", sigma_data=0.7)
    sampler = IMMSampler(model, sampling_times(2, "vp_cosine", T=0.996))
    assert sampler.sigma_data == 0.7 and sampler.schedule.name == "vp_cosine" and sampler.steps == 2
    with pytest.raises(ValueError, match="sigma_data"):
        IMMSampler(model, sampling_times(2), sigma_data=0.5)
    with pytest.raises(ValueError, match="schedule"):
        IMMSampler(model, sampling_times(2), schedule="fm")


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(model=None), TypeError, "model"),
    (dict(times=[0.994]), ValueError, "times"),
    (dict(times=[0.5, 0.7, 0.0]), ValueError, "times"),
    (dict(times=[1.5, 0.0]), ValueError, "times"),
    (dict(times=torch.tensor([1, 0])), TypeError, "times"),
    (dict(times="0.994"), TypeError, "times"),
    (dict(method="euler"), ValueError, "method"),
    (dict(sigma_data=0.0), ValueError, "sigma_data"),
    (dict(sigma_data=float("inf")), ValueError, "sigma_data"),
    (dict(schedule="ve"), ValueError, "schedule"),
    (dict(guidance="1.5"), ValueError, "guidance"),
    (dict(guidance=float("nan")), ValueError, "guidance"),
])
def test_sampler_rejects_bad_construction(kwargs, error, match):
    arguments = dict(model=ExactGaussianJump(), times=sampling_times(2))
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        IMMSampler(**arguments)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(shape=()), ValueError, "shape"),
    (dict(shape=(0, 3)), ValueError, "shape"),
    (dict(shape=(4.0, 3)), ValueError, "shape"),
    (dict(labels=[0, 1, 2, 3]), TypeError, "labels"),
    (dict(labels=torch.zeros(4)), TypeError, "labels"),
    (dict(labels=torch.zeros(3, dtype=torch.long)), ValueError, "labels"),
    (dict(generator=torch.Generator(), seed=0), ValueError, "generator"),
    (dict(generator=0), TypeError, "generator"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(seed=1.5), ValueError, "seed"),
    (dict(dtype=torch.int64), TypeError, "dtype"),
    (dict(dtype="float64"), TypeError, "dtype"),
])
def test_sample_rejects_bad_input(kwargs, error, match):
    arguments = dict(shape=(4, 3))
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        IMMSampler(ExactGaussianJump(), sampling_times(2)).sample(**arguments)


def test_sample_rejects_a_model_output_of_the_wrong_shape():
    with pytest.raises(ValueError, match="model"):
        IMMSampler(lambda x, t, s, labels=None, guidance=None: x[:, :1], sampling_times(2)).sample((4, 3), seed=0)
