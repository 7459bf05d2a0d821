"""The parametrisation f_{s,t} = c_skip x_t + c_out G(c_in x_t, ...) (imm-method.md §2.1, §2.2, §4.4): the
f-level coefficients against DDIM composed with the g-level ones, the boundary f_{t,t} = x, what the
network receives, the regression targets, classifier-free guidance in one batched pass, and bad input."""
import math

import pytest
import torch

from imm_ext.method import F_TYPES, IMMParametrization, c_in, c_out, c_skip, ddim, get_schedule, interpolate

SIGMA_DATA = 0.5
PAIRS = [(schedule, f_type) for schedule in ("fm", "vp_cosine") for f_type in F_TYPES
         if (schedule, f_type) != ("vp_cosine", "euler_fm")]


def random_times(n, seed=0, low=0.01, high=1.0):
    gen = torch.Generator().manual_seed(seed)
    t = low + (high - low) * torch.rand(n, generator=gen, dtype=torch.float64)
    s = t * torch.rand(n, generator=gen, dtype=torch.float64)
    return s, t


def random_data(shape, seed=1, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)


def g_level(t, schedule, f_type):
    """The paper's clean-sample coefficients (c_skip(t), c_out(t)) of g = c_skip x_t + c_out G (§2.1)."""
    schedule = get_schedule(schedule)
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    if f_type == "identity":
        return torch.zeros_like(t), torch.ones_like(t)
    if f_type == "simple_edm":
        norm = alpha ** 2 + sigma ** 2
        return alpha / norm, -SIGMA_DATA * sigma / norm.sqrt()
    return torch.ones_like(t), -SIGMA_DATA * t


def noise_network(x, c_t, c_s, labels):
    return torch.randn_like(x)


class RecordingNetwork:
    """Returns a fixed output and records every call's arguments."""

    def __init__(self, output=None):
        self.output = output
        self.calls = []

    def __call__(self, x, c_t, c_s, labels):
        self.calls.append((x.clone(), c_t.clone(), c_s.clone(), None if labels is None else labels.clone()))
        return torch.zeros_like(x) if self.output is None else self.output.to(x.dtype)


class LabelNetwork:
    """An output that depends on the input, both times and the label; records the batch sizes it sees."""

    def __init__(self):
        self.batch_sizes = []

    def __call__(self, x, c_t, c_s, labels):
        self.batch_sizes.append(x.shape[0])
        per_sample = (labels.to(x.dtype) + 1.0) + 1e-3 * c_t - 2e-3 * c_s
        return torch.sin(x) * per_sample.view(-1, 1, 1) + labels.to(x.dtype).view(-1, 1, 1) ** 2


@pytest.mark.parametrize("schedule,f_type", PAIRS)
def test_f_level_coefficients_are_ddim_of_the_g_level_ones(schedule, f_type):
    s, t = random_times(256)
    x_t, raw = random_data((256, 5), seed=1), random_data((256, 5), seed=2)
    skip_g, out_g = (coefficient[:, None] for coefficient in g_level(t, schedule, f_type))
    expected = ddim(x_t, skip_g * x_t + out_g * raw, s, t, schedule)
    skip, out = c_skip(s, t, schedule, f_type), c_out(s, t, schedule, f_type, SIGMA_DATA)
    assert skip.dtype == out.dtype == torch.float64
    torch.testing.assert_close(skip[:, None] * x_t + out[:, None] * raw, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("schedule,f_type", PAIRS)
def test_module_output_is_c_skip_x_plus_c_out_g(schedule, f_type):
    s, t = random_times(8, seed=3)
    x_t, raw = random_data((8, 2, 3), seed=4), random_data((8, 2, 3), seed=5)
    model = IMMParametrization(RecordingNetwork(raw), schedule=schedule, f_type=f_type)
    expected = (c_skip(s, t, schedule, f_type).view(-1, 1, 1) * x_t
                + c_out(s, t, schedule, f_type, SIGMA_DATA).view(-1, 1, 1) * raw)
    torch.testing.assert_close(model(x_t, t, s), expected, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(model.raw_output(x_t, t, s), raw, rtol=0, atol=0)


def test_closed_forms_from_the_spec_table():
    s, t = random_times(64, seed=6)
    norm = ((1 - t) ** 2 + t ** 2).sqrt()
    torch.testing.assert_close(c_out(s, t, "fm", "simple_edm"), -SIGMA_DATA * (t - s) / norm, rtol=1e-13, atol=0)
    torch.testing.assert_close(c_out(s, t, "fm", "identity"), (t - s) / t, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(c_out(s, t, "fm", "euler_fm"), -(t - s) * SIGMA_DATA, rtol=0, atol=0)
    gap = 0.5 * math.pi * (t - s)
    torch.testing.assert_close(c_skip(s, t, "vp_cosine", "simple_edm"), torch.cos(gap), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(c_out(s, t, "vp_cosine", "simple_edm"), -SIGMA_DATA * torch.sin(gap),
                               rtol=1e-12, atol=1e-14)
    for schedule in ("fm", "vp_cosine"):
        alpha, sigma = get_schedule(schedule).alpha(t), get_schedule(schedule).sigma(t)
        torch.testing.assert_close(c_in(t, schedule, SIGMA_DATA), 1 / (SIGMA_DATA * (alpha ** 2 + sigma ** 2).sqrt()),
                                   rtol=1e-14, atol=0)


@pytest.mark.parametrize("schedule,f_type", PAIRS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_jump_to_the_same_time_is_the_identity(schedule, f_type, dtype):
    model = IMMParametrization(noise_network, schedule=schedule, f_type=f_type)
    x = random_data((6, 3, 2), seed=7, dtype=dtype)
    for time in [0.0, 1e-7, 0.3, 0.994, 0.996, 1.0]:
        assert torch.equal(model(x, time, time), x), time
    per_sample = torch.tensor([0.0, 0.1, 0.5, 0.9, 0.994, 1.0], dtype=torch.float64)
    assert torch.equal(model(x, per_sample, per_sample), x)
    assert torch.equal(c_skip(per_sample, per_sample, schedule, f_type), torch.ones_like(per_sample))
    assert torch.equal(c_out(per_sample, per_sample, schedule, f_type), torch.zeros_like(per_sample))


def test_identity_f_type_has_no_nan_on_the_domain():
    s = torch.tensor([0.0, 0.0, 0.0, 1e-300], dtype=torch.float64)
    t = torch.tensor([0.0, 1e-300, 1.0, 1e-300], dtype=torch.float64)
    for schedule in ("fm", "vp_cosine"):
        assert bool(torch.isfinite(c_skip(s, t, schedule, "identity")).all())
        assert bool(torch.isfinite(c_out(s, t, schedule, "identity")).all())


@pytest.mark.parametrize("schedule", ["fm", "vp_cosine"])
@pytest.mark.parametrize("time_embedding", ["identity", "stride"])
def test_network_receives_scaled_input_and_times(schedule, time_embedding):
    s, t = random_times(5, seed=8)
    x_t = random_data((5, 4), seed=9)
    network = RecordingNetwork()
    labels = torch.tensor([3, 1, 4, 1, 5])
    model = IMMParametrization(network, schedule=schedule, f_type="simple_edm", time_embedding=time_embedding)
    model(x_t, t, s, labels)
    (network_x, c_t, c_s, seen_labels), = network.calls
    alpha, sigma = get_schedule(schedule).alpha(t), get_schedule(schedule).sigma(t)
    torch.testing.assert_close(network_x, x_t / (SIGMA_DATA * (alpha ** 2 + sigma ** 2).sqrt())[:, None],
                               rtol=1e-14, atol=0)
    torch.testing.assert_close(c_t, 1000 * t, rtol=1e-15, atol=0)
    torch.testing.assert_close(c_s, 1000 * (s if time_embedding == "identity" else t - s), rtol=1e-15, atol=0)
    assert torch.equal(seen_labels, labels)


def test_scalar_times_reach_the_network_per_sample_in_the_data_dtype():
    network = RecordingNetwork()
    model = IMMParametrization(network, time_embedding="stride", time_scale=10.0)
    model(random_data((3, 2), dtype=torch.float32), 0.75, 0.25)
    network_x, c_t, c_s, labels = network.calls[0]
    assert network_x.dtype == c_t.dtype == c_s.dtype == torch.float32
    assert c_t.tolist() == [7.5] * 3 and c_s.tolist() == [5.0] * 3 and labels is None


def test_half_precision_data_keeps_float32_time_inputs():
    network = RecordingNetwork()
    out = IMMParametrization(network)(random_data((2, 3), dtype=torch.bfloat16), 0.994, 0.993)
    network_x, c_t, c_s, _ = network.calls[0]
    assert out.dtype == network_x.dtype == torch.bfloat16 and c_t.dtype == c_s.dtype == torch.float32
    assert c_t.tolist() == pytest.approx([994.0, 994.0]) and c_s.tolist() == pytest.approx([993.0, 993.0])


def test_float64_state_is_combined_in_float64_with_a_float32_network():
    def float32_network(x, c_t, c_s, labels):
        return torch.ones(x.shape, dtype=torch.float32)

    x_t = random_data((4, 3))
    t, s = 0.994, 0.994 - 1e-9
    out = IMMParametrization(float32_network)(x_t, t, s)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, x_t - (t - s) * SIGMA_DATA, rtol=1e-15, atol=0)


def test_euler_fm_regression_target_is_the_velocity():
    """§2.1 "Regression view": with x_t = alpha_t x + sigma_t eps (eps ~ N(0, sigma_d^2)), f_{s,t}(x_t) equals
    alpha_s x + sigma_s eps when sigma_d G = eps - x."""
    s, t = random_times(32, seed=10, low=0.0)
    x, eps = random_data((32, 6), seed=11), SIGMA_DATA * random_data((32, 6), seed=12)
    model = IMMParametrization(RecordingNetwork((eps - x) / SIGMA_DATA), schedule="fm", f_type="euler_fm")
    torch.testing.assert_close(model(interpolate(x, eps, t, "fm"), t, s), interpolate(x, eps, s, "fm"),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("schedule", ["fm", "vp_cosine"])
def test_simple_edm_regression_target(schedule):
    """§2.1 "Regression view" for Simple-EDM: sigma_d G = (alpha_t eps - sigma_t x) / sqrt(alpha_t^2 + sigma_t^2)
    makes f_{s,t}(x_t) = alpha_s x + sigma_s eps (the v-target under the cosine schedule)."""
    s, t = random_times(32, seed=13)
    x, eps = random_data((32, 6), seed=14), SIGMA_DATA * random_data((32, 6), seed=15)
    alpha, sigma = (value[:, None] for value in (get_schedule(schedule).alpha(t), get_schedule(schedule).sigma(t)))
    target = (alpha * eps - sigma * x) / ((alpha ** 2 + sigma ** 2).sqrt() * SIGMA_DATA)
    model = IMMParametrization(RecordingNetwork(target), schedule=schedule, f_type="simple_edm")
    torch.testing.assert_close(model(interpolate(x, eps, t, schedule), t, s), interpolate(x, eps, s, schedule),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("w", [0.0, 1.0, 1.5, -0.5])
def test_guidance_combines_raw_outputs_in_one_batched_call(w):
    network = LabelNetwork()
    model = IMMParametrization(network, schedule="fm", f_type="euler_fm", null_label=10)
    x_t, labels = random_data((4, 2, 3), seed=16), torch.tensor([0, 3, 7, 9])
    s, t = random_times(4, seed=17)
    network_x = c_in(t, "fm", SIGMA_DATA).view(-1, 1, 1) * x_t
    conditional = network(network_x, 1000 * t, 1000 * s, labels)
    unconditional = network(network_x, 1000 * t, 1000 * s, torch.full_like(labels, 10))
    network.batch_sizes.clear()
    guided = unconditional + w * (conditional - unconditional)
    torch.testing.assert_close(model.raw_output(x_t, t, s, labels, guidance=w), guided, rtol=1e-14, atol=1e-14)
    assert network.batch_sizes == [8]
    expected = x_t - ((t - s) * SIGMA_DATA).view(-1, 1, 1) * guided
    torch.testing.assert_close(model(x_t, t, s, labels, guidance=w), expected, rtol=1e-14, atol=1e-14)
    assert network.batch_sizes == [8, 8]


def test_guidance_needs_labels_and_a_null_label():
    x_t = random_data((2, 3))
    with pytest.raises(ValueError, match="labels"):
        IMMParametrization(noise_network, null_label=0)(x_t, 0.5, 0.2, guidance=1.5)
    with pytest.raises(ValueError, match="null_label"):
        IMMParametrization(noise_network)(x_t, 0.5, 0.2, torch.tensor([1, 2]), guidance=1.5)


class LinearNetwork(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 3, dtype=torch.float64)

    def forward(self, x, c_t, c_s, labels):
        return self.linear(x)


def test_network_parameters_belong_to_the_parametrization():
    network = LinearNetwork()
    model = IMMParametrization(network)
    assert [id(p) for p in model.parameters()] == [id(p) for p in network.parameters()]
    model(random_data((2, 3)), 0.5, 0.2).sum().backward()
    assert network.linear.weight.grad is not None


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(network=None), TypeError, "network"),
    (dict(network=3), TypeError, "network"),
    (dict(schedule="cosine"), ValueError, "schedule"),
    (dict(schedule=None), ValueError, "schedule"),
    (dict(f_type="edm"), ValueError, "f_type"),
    (dict(schedule="vp_cosine", f_type="euler_fm"), ValueError, "f_type"),
    (dict(time_embedding="sinusoidal"), ValueError, "time_embedding"),
    (dict(time_scale=0.0), ValueError, "time_scale"),
    (dict(time_scale=-1000.0), ValueError, "time_scale"),
    (dict(time_scale=math.inf), ValueError, "time_scale"),
    (dict(time_scale=math.nan), ValueError, "time_scale"),
    (dict(time_scale="1000"), ValueError, "time_scale"),
    (dict(time_scale=True), ValueError, "time_scale"),
    (dict(sigma_data=0.0), ValueError, "sigma_data"),
    (dict(sigma_data=-0.5), ValueError, "sigma_data"),
    (dict(sigma_data=math.inf), ValueError, "sigma_data"),
    (dict(sigma_data=None), ValueError, "sigma_data"),
    (dict(null_label=-1), ValueError, "null_label"),
    (dict(null_label=1.0), ValueError, "null_label"),
    (dict(null_label=True), ValueError, "null_label"),
    (dict(null_label="0"), ValueError, "null_label"),
])
def test_bad_constructor_arguments(kwargs, error, match):
    kwargs = {"network": noise_network, **kwargs}
    with pytest.raises(error, match=match):
        IMMParametrization(**kwargs)


@pytest.mark.parametrize("call,error,match", [
    (lambda m, x: m([[1.0]], 0.5, 0.2), TypeError, "x_t"),
    (lambda m, x: m(torch.ones(2, 3, dtype=torch.int64), 0.5, 0.2), TypeError, "x_t"),
    (lambda m, x: m(torch.tensor(1.0), 0.5, 0.2), ValueError, "x_t"),
    (lambda m, x: m(x, torch.ones(3), 0.2), ValueError, "t must"),
    (lambda m, x: m(x, 0.5, torch.ones(2, 1)), ValueError, "s must"),
    (lambda m, x: m(x, "0.5", 0.2), TypeError, "t must"),
    (lambda m, x: m(x, 0.5, 0.2, torch.tensor([1.0, 2.0])), TypeError, "labels"),
    (lambda m, x: m(x, 0.5, 0.2, torch.tensor([True, False])), TypeError, "labels"),
    (lambda m, x: m(x, 0.5, 0.2, [1, 2]), TypeError, "labels"),
    (lambda m, x: m(x, 0.5, 0.2, torch.tensor([1, 2, 3])), ValueError, "labels"),
    (lambda m, x: m(x, 0.5, 0.2, torch.tensor([1, 2]), guidance=math.nan), ValueError, "guidance"),
    (lambda m, x: m(x, 0.5, 0.2, torch.tensor([1, 2]), guidance="1.5"), ValueError, "guidance"),
    (lambda m, x: m.raw_output(x, 0.5, 0.2, torch.tensor([[1, 2]])), ValueError, "labels"),
])
def test_bad_forward_arguments(call, error, match):
    model = IMMParametrization(noise_network, null_label=0)
    with pytest.raises(error, match=match):
        call(model, random_data((2, 3)))


def test_network_with_the_wrong_output_shape():
    model = IMMParametrization(lambda x, c_t, c_s, labels: x[:, :1])
    with pytest.raises(ValueError, match="network must return"):
        model(random_data((2, 3)), 0.5, 0.2)


@pytest.mark.parametrize("call,error,match", [
    (lambda: c_skip(0.2, 0.5, "fm", "edm"), ValueError, "f_type"),
    (lambda: c_out(0.2, 0.5, "vp_cosine", "euler_fm"), ValueError, "f_type"),
    (lambda: c_skip(0.2, 0.5, "linear", "identity"), ValueError, "schedule"),
    (lambda: c_in(0.5, "linear"), ValueError, "schedule"),
    (lambda: c_out(0.2, 0.5, "fm", "simple_edm", sigma_data=0.0), ValueError, "sigma_data"),
    (lambda: c_in(0.5, "fm", sigma_data=math.nan), ValueError, "sigma_data"),
    (lambda: c_skip(torch.ones(2), torch.ones(3), "fm", "identity"), ValueError, "s and t"),
    (lambda: c_out("0.2", 0.5, "fm", "identity"), TypeError, "s must"),
    (lambda: c_in(None, "fm"), TypeError, "t must"),
])
def test_bad_coefficient_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_fused_inference_path_matches_the_autograd_path():
    """Without grad, forward runs the fused sampler_step kernel; values match the autograd path."""

    class LabelNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(5, 5)

        def forward(self, x, c_t, c_s, labels=None):
            return self.linear(x) + (c_t - c_s)[:, None] / 1000 + labels[:, None].to(x.dtype)

    model = IMMParametrization(LabelNet(), schedule="fm", f_type="simple_edm", null_label=3)
    x = torch.randn(6, 5, dtype=torch.float64)  # float64 state, float32 network
    t, s = torch.rand(6, dtype=torch.float64) * 0.9 + 0.05, torch.rand(6, dtype=torch.float64) * 0.05
    labels = torch.arange(6) % 3
    for guidance in (None, 1.5):
        with torch.enable_grad():
            expected = model(x, t, s, labels, guidance=guidance)
        with torch.no_grad():
            got = model(x, t, s, labels, guidance=guidance)
        assert got.dtype == torch.float64
        # With guidance the fused kernel combines the float32 outputs in float64; the autograd path
        # combines them in float32 first: they agree to float32 rounding.
        tolerance = dict(rtol=1e-12, atol=1e-12) if guidance is None else dict(rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(got, expected.detach(), **tolerance)
