"""IMMLoss pins the paper's objective down: Eq. 67 recomputed independently, Lemma 1 (M = 1 with the
squared-distance kernel is the consistency-model loss), the t == s guard, shared label dropout,
the stop-gradient target pass, and bad input."""
import pytest
import torch

from imm_ext.method import IMMLoss, IMMParametrization, PriorWeighting, RMapping, get_schedule

D = 6


class TinyNetwork(torch.nn.Module):
    """G(x, c_t, c_s, labels): a small MLP of x and the two time inputs."""

    def __init__(self, dim=D, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(torch.nn.Linear(dim + 2, 32), torch.nn.SiLU(), torch.nn.Linear(32, dim))
        self.calls = []

    def forward(self, x, c_t, c_s, labels=None):
        self.calls.append(dict(grad=torch.is_grad_enabled(), labels=None if labels is None else labels.clone()))
        features = torch.cat([x, c_t[:, None].to(x.dtype) / 1000, c_s[:, None].to(x.dtype) / 1000], dim=1)
        return self.net(features)


def make(f_type="euler_fm", particles=4, kernel="laplace", k=12, eps_t=0.0, dtype=torch.float64, **loss_options):
    model = IMMParametrization(TinyNetwork().to(dtype), schedule="fm", f_type=f_type, null_label=10)
    loss = IMMLoss(RMapping("fm", k=k, eps_t=eps_t, T=0.994), PriorWeighting("fm", a=1, b=4),
                   particles=particles, kernel=kernel, **loss_options)
    return model, loss


def fixed_inputs(batch=16, groups=4, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, D, generator=gen, dtype=torch.float64) * 0.5
    noise = torch.randn(batch, D, generator=gen, dtype=torch.float64) * 0.5
    t = 0.05 + 0.9 * torch.rand(groups, generator=gen, dtype=torch.float64)
    s = t * torch.rand(groups, generator=gen, dtype=torch.float64)
    return x, noise, t, s


@pytest.mark.parametrize("f_type", ["euler_fm", "simple_edm"])
def test_loss_equals_independent_eq67(f_type):
    model, loss_fn = make(f_type)
    x, noise, t, s = fixed_inputs()
    loss, diagnostics = loss_fn.evaluate(model, x, noise, t, s)

    # Independent computation, following the pseudocode of imm-method.md §3.10.
    m, groups = 4, 4
    eta = lambda u: u / (1 - u)
    step = (eta(torch.tensor(0.994, dtype=torch.float64)) - eta(torch.tensor(0.0, dtype=torch.float64))) / 2**12
    r = torch.maximum(s, (eta(t) - step) / (1 + eta(t) - step))
    t_, s_, r_ = (v.repeat_interleave(m)[:, None] for v in (t, s, r))
    x_t, x_r = (1 - t_) * x + t_ * noise, (1 - r_) * x + r_ * noise
    with torch.no_grad():
        y_r = model(x_r, r_[:, 0], s_[:, 0])
    y_t = model(x_t, t_[:, 0], s_[:, 0])
    y_t, y_r = y_t.view(groups, m, D), y_r.view(groups, m, D)
    if f_type == "euler_fm":
        abs_c_out = (t - s) * 0.5
    else:
        abs_c_out = 0.5 * (t - s) / torch.sqrt((1 - t) ** 2 + t**2)
    wk = (1.0 / abs_c_out)[:, None, None]

    def K(a, b):
        dist = ((a[:, :, None] - b[:, None]) ** 2).sum(-1).clamp_min(1e-16).sqrt()
        return torch.exp(-wk * dist / D)

    mmd = K(y_t, y_t).mean((1, 2)) + K(y_r, y_r).mean((1, 2)) - 2 * K(y_t, y_r).mean((1, 2))
    w = t / ((t**2 + torch.exp(torch.tensor(-4.0, dtype=torch.float64)) * (1 - t) ** 2) * ((1 - t) ** 2 + t**2))
    expected = (w * mmd).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(diagnostics["r"], r)
    torch.testing.assert_close(diagnostics["k_tt"], K(y_t, y_t).mean().detach())
    torch.testing.assert_close(diagnostics["k_tr"], K(y_t, y_r).mean().detach())
    params = list(model.parameters())
    torch.testing.assert_close(torch.autograd.grad(loss, params, retain_graph=True),
                               torch.autograd.grad(expected, params))


def test_lemma1_single_particle_squared_distance_kernel_is_consistency_loss():
    def squared_distance_mmd(y_t, y_r, bandwidth):
        k = lambda a, b: -((a[:, :, None] - b[:, None]) ** 2).sum(-1)
        return k(y_t, y_t).mean((1, 2)) + k(y_r, y_r).mean((1, 2)) - 2 * k(y_t, y_r).mean((1, 2))

    model, loss_fn = make(particles=1, kernel=squared_distance_mmd)
    x, noise, t, s = fixed_inputs(batch=8, groups=8)
    loss, diagnostics = loss_fn.evaluate(model, x, noise, t, s)
    r = diagnostics["r"]
    y_t = model(((1 - t) * x.T + t * noise.T).T, t, s)
    with torch.no_grad():
        y_r = model(((1 - r) * x.T + r * noise.T).T, r, s)
    consistency = (loss_fn.weighting(t) * 2 * ((y_t - y_r) ** 2).sum(1)).mean()
    torch.testing.assert_close(loss, consistency, rtol=1e-10, atol=1e-14)


def test_equal_times_give_finite_loss_and_gradients():
    model, loss_fn = make("euler_fm")
    x, noise, t, s = fixed_inputs()
    s = s.clone()
    s[:2] = t[:2]  # t == s in two groups: c_out = 0
    t[3] = s[3] = 0.0  # and t == s == 0 in another
    loss, _ = loss_fn.evaluate(model, x, noise, t, s)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)


def test_target_pass_has_no_gradient_and_labels_are_dropped_identically():
    model, loss_fn = make(label_dropout=0.5)
    x, _, _, _ = fixed_inputs()
    labels = torch.arange(16) % 10
    loss_fn(model, x, labels, generator=torch.Generator().manual_seed(3))
    target, online = model.network.calls
    assert target["grad"] is False and online["grad"] is True
    assert torch.equal(target["labels"], online["labels"])
    dropped = online["labels"] == 10
    assert 0 < int(dropped.sum()) < 16 and torch.equal(online["labels"][~dropped], labels[~dropped])


def test_random_draws_respect_bounds_and_reproduce():
    model, loss_fn = make(eps_t=0.006, particles=2)
    t, s = loss_fn.sample_times(1000, torch.Generator().manual_seed(0))
    assert bool(((t >= 0.006) & (t <= 0.994) & (s >= 0.006) & (s <= t)).all())
    x = fixed_inputs()[0]
    a, _ = loss_fn(model, x, generator=torch.Generator().manual_seed(5))
    b, _ = loss_fn(model, x, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and torch.isfinite(a)


@pytest.mark.parametrize("options,error,match", [
    (dict(particles=0), ValueError, "particles"),
    (dict(particles=2.5), ValueError, "particles"),
    (dict(kernel="cauchy"), ValueError, "kernel"),
    (dict(label_dropout=1.0), ValueError, "label_dropout"),
])
def test_bad_options(options, error, match):
    with pytest.raises(error, match=match):
        make(**options)


def test_bad_batch_and_missing_null_label():
    model, loss_fn = make(particles=4)
    with pytest.raises(ValueError, match="multiple of particles"):
        loss_fn(model, torch.zeros(6, D, dtype=torch.float64))
    with pytest.raises(TypeError, match="mapping"):
        IMMLoss("eta", PriorWeighting("fm"))
    model.null_label = None
    _, dropping = make(label_dropout=0.1)
    with pytest.raises(ValueError, match="null_label"):
        dropping(model, torch.zeros(8, D, dtype=torch.float64), torch.zeros(8, dtype=torch.long))


class GaussianJump:
    """f_{s,t} for data N(mu, diag(v)) under "fm" with Euler-FM's boundary: the exact marginal-preserving
    map x_s = m_s + sqrt(V_s / V_t) (x_t - m_t) (m_u = alpha_u mu, V_u = alpha_u^2 v + sigma_u^2 sigma_d^2),
    optionally perturbed by (t - s) times a shift or a scale error, which keeps f_{t,t} = x."""

    schedule, f_type, sigma_data, null_label = get_schedule("fm"), "euler_fm", 0.5, None
    mu = torch.tensor([1.0, -0.5, 0.2], dtype=torch.float64)
    variance = torch.tensor([0.3, 0.05, 0.6], dtype=torch.float64)

    def __init__(self, scale_error=0.0, shift_error=0.0):
        self.scale_error, self.shift_error = scale_error, shift_error

    def moments(self, u):
        u = u[:, None]
        return (1 - u) * self.mu, (1 - u) ** 2 * self.variance + u**2 * self.sigma_data**2

    def __call__(self, x_t, t, s, labels=None):
        (m_t, v_t), (m_s, v_s) = self.moments(t), self.moments(s)
        gap = (t - s)[:, None]
        return m_s + self.shift_error * gap + (1 + self.scale_error * gap) * torch.sqrt(v_s / v_t) * (x_t - m_t)


def test_exact_gaussian_map_has_lower_loss_than_perturbed_maps():
    loss_fn = IMMLoss(RMapping("fm", k=8, T=0.994), PriorWeighting("fm"), particles=4)
    gen = torch.Generator().manual_seed(0)
    batch = 16384
    x = GaussianJump.mu + GaussianJump.variance.sqrt() * torch.randn(batch, 3, generator=gen, dtype=torch.float64)
    noise = 0.5 * torch.randn(batch, 3, generator=gen, dtype=torch.float64)
    t, s = loss_fn.sample_times(batch // 4, gen)
    loss = lambda model: float(loss_fn.evaluate(model, x, noise, t, s)[0])  # paired: same draws for all
    exact = loss(GaussianJump())
    for perturbed in (GaussianJump(scale_error=0.5), GaussianJump(scale_error=-0.5),
                      GaussianJump(shift_error=0.5), GaussianJump(shift_error=-1.0)):
        assert exact < 0.99 * loss(perturbed)
