"""EDM preconditioning, loss and samplers against the supplementary's eq. (1)-(9)."""

import math

import pytest
import torch

from ouroboros3d.diffusion import edm

SIGMAS = [0.002, 0.1, 0.5, 1.0, 2.7, 14.6, 80.0, 700.0]


@pytest.mark.parametrize("sigma", SIGMAS)
def test_preconditioning_matches_equations_5_to_9(sigma):
    s = torch.tensor(sigma, dtype=torch.float64)
    assert edm.c_in(s).item() == pytest.approx(1 / math.sqrt(sigma**2 + 1), rel=1e-12)
    assert edm.c_out(s).item() == pytest.approx(-sigma / math.sqrt(sigma**2 + 1), rel=1e-12)
    assert edm.c_skip(s).item() == pytest.approx(1 / (sigma**2 + 1), rel=1e-12)
    assert edm.c_noise(s).item() == pytest.approx(0.25 * math.log(sigma), rel=1e-12, abs=1e-15)
    assert edm.loss_weight(s).item() == pytest.approx((1 + sigma**2) / sigma**2, rel=1e-12)


def test_preconditioning_gives_unit_variance_target():
    # With sigma_data = 1, c_skip^2 + c_out^2 * (sigma^2 + 1) ... the effective training target
    # of F has unit variance: (x0 - c_skip * x) / c_out where x = x0 + sigma * n.
    torch.manual_seed(0)
    for sigma in [0.05, 1.0, 20.0]:
        x0 = torch.randn(200_000, dtype=torch.float64)
        x = x0 + sigma * torch.randn_like(x0)
        s = torch.tensor(sigma, dtype=torch.float64)
        target = (x0 - edm.c_skip(s) * x) / edm.c_out(s)
        assert target.std().item() == pytest.approx(1.0, abs=0.01)
        assert (edm.c_in(s) * x).std().item() == pytest.approx(1.0, abs=0.01)


class _Recorder(torch.nn.Module):
    """A network that records what EDMPrecond passes it and returns a constant."""

    def __init__(self, value=0.3):
        super().__init__()
        self.value = value

    def forward(self, x_in, c_noise, **cond):
        self.x_in, self.c_noise, self.cond = x_in, c_noise, cond
        return torch.full_like(x_in, self.value)


def test_precond_is_equation_4_around_any_network():
    net = _Recorder()
    D = edm.EDMPrecond(net)
    x = torch.randn(3, 2, 4)
    sigma = torch.tensor([0.5, 2.0, 10.0])
    out = D(x, sigma, extra="passed")
    s = sigma.view(-1, 1, 1)
    torch.testing.assert_close(net.x_in, x / torch.sqrt(s**2 + 1))
    torch.testing.assert_close(net.c_noise, 0.25 * torch.log(sigma))
    torch.testing.assert_close(out, x / (s**2 + 1) + (-s / torch.sqrt(s**2 + 1)) * 0.3)
    assert net.cond == {"extra": "passed"}


def test_denoiser_returns_x_as_sigma_goes_to_zero():
    D = edm.EDMPrecond(_Recorder(value=5.0))
    x = torch.randn(2, 8, dtype=torch.float64)
    out = D(x, torch.tensor(1e-8, dtype=torch.float64))
    torch.testing.assert_close(out, x, atol=1e-6, rtol=0)


def test_scalar_sigma_is_broadcast_and_bad_shapes_are_rejected():
    D = edm.EDMPrecond(_Recorder())
    x = torch.randn(4, 3)
    assert D(x, 1.0).shape == x.shape
    with pytest.raises(ValueError, match="sigma"):
        D(x, torch.ones(3))


def test_training_sigma_distribution_matches_p_mean_p_std():
    g = torch.Generator().manual_seed(0)
    n = 200_000
    log_sigma = torch.log(edm.sample_training_sigma(n, generator=g)).double()
    # standard errors: std/sqrt(n) for the mean, std/sqrt(2n) for the std
    assert log_sigma.mean().item() == pytest.approx(1.0, abs=4 * 1.6 / math.sqrt(n))
    assert log_sigma.std().item() == pytest.approx(1.6, abs=4 * 1.6 / math.sqrt(2 * n))
    other = torch.log(edm.sample_training_sigma(n, p_mean=-1.2, p_std=1.2, generator=g))
    assert other.mean().item() == pytest.approx(-1.2, abs=0.02)


def test_noise_mixture_draws_its_share_from_the_second_log_normal():
    g = torch.Generator().manual_seed(0)
    n = 200_000
    # two far-apart components: every sample is attributable to one of them
    log_sigma = torch.log(edm.sample_training_sigma(n, -3.0, 0.1, g, mixture=(0.3, 3.0, 0.2))).double()
    second = log_sigma > 0
    assert second.double().mean().item() == pytest.approx(0.3, abs=4 * math.sqrt(0.3 * 0.7 / n))
    assert log_sigma[second].mean().item() == pytest.approx(3.0, abs=0.01)
    assert log_sigma[second].std().item() == pytest.approx(0.2, abs=0.01)
    assert log_sigma[~second].mean().item() == pytest.approx(-3.0, abs=0.01)
    # share 0 is the plain first log-normal
    only_first = torch.log(edm.sample_training_sigma(n, -3.0, 0.1, g, mixture=(0.0, 3.0, 0.2)))
    assert only_first.max().item() < 0


def test_loss_is_weighted_dsm_equation_3():
    x0 = torch.randn(4, 5)
    sigma = torch.tensor([0.3, 1.0, 3.0, 9.0])
    g = torch.Generator().manual_seed(1)
    constant = torch.full_like(x0, 0.25)
    loss, denoised = edm.EDMLoss()(lambda x, s: constant, x0, sigma=sigma, generator=g)
    expected = (1 + sigma**2) / sigma**2 * ((0.25 - x0) ** 2).mean(1)
    torch.testing.assert_close(loss, expected)
    assert denoised is constant


def test_loss_of_the_ideal_denoiser_for_a_point_is_zero():
    # data = a single point p: the ideal D(x; sigma) = p for every sigma.
    p = torch.tensor([[0.7, -0.2, 0.1]])
    loss, _ = edm.EDMLoss()(lambda x, s: p.expand_as(x), p.expand(16, 3))
    assert torch.all(loss == 0)


def test_karras_schedule():
    sigmas = edm.karras_sigmas(25, 0.002, 700.0)
    assert sigmas.shape == (26,)
    assert sigmas[0].item() == pytest.approx(700.0, rel=1e-5)
    assert sigmas[-2].item() == pytest.approx(0.002, rel=1e-4)
    assert sigmas[-1] == 0
    assert torch.all(sigmas[:-1] > sigmas[1:])
    # EDM eq. (5) of Karras et al.: sigma_i^(1/rho) is linear in i
    r = sigmas[:-1].double() ** (1 / 7)
    torch.testing.assert_close(r.diff(), r.diff().mean().expand(24), rtol=1e-3, atol=0)
    with pytest.raises(ValueError):
        edm.karras_sigmas(0)


def _gaussian_data_denoiser(mu: torch.Tensor, s: float):
    """The ideal denoiser when data ~ N(mu, s^2 I): E[x0 | x] = mu + s^2 (x - mu) / (s^2 + sigma^2)."""

    def D(x, sigma, **_):
        return mu + s**2 / (s**2 + sigma**2) * (x - mu)

    return D


@pytest.mark.parametrize("sampler", [edm.sample_euler, edm.sample_heun])
def test_sampler_with_ideal_denoiser_of_a_point_lands_on_it(sampler):
    mu = torch.tensor([0.3, -0.8, 1.5], dtype=torch.float64)
    sigmas = edm.karras_sigmas(25, 0.002, 80.0).double()
    x = sigmas[0] * torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = sampler(lambda x, s: mu.expand_as(x), x, sigmas)
    torch.testing.assert_close(out, mu.expand_as(out), atol=1e-9, rtol=0)


def test_heun_transports_noise_to_the_gaussian_data_distribution():
    # The probability-flow ODE, eq. (1), maps N(mu, (s^2 + sigma_max^2) I) onto N(mu, s^2 I).
    mu, s = torch.tensor([0.5, -1.0], dtype=torch.float64), 0.4
    sigmas = edm.karras_sigmas(40, 0.002, 80.0).double()
    g = torch.Generator().manual_seed(0)
    x = mu + math.sqrt(s**2 + sigmas[0].item() ** 2) * torch.randn(20_000, 2, generator=g, dtype=torch.float64)
    out = edm.sample_heun(_gaussian_data_denoiser(mu, s), x, sigmas)
    assert out.mean(0).tolist() == pytest.approx(mu.tolist(), abs=0.02)
    assert out.std(0).tolist() == pytest.approx([s, s], rel=0.02)


def test_euler_step_is_the_discretised_ode():
    # For Gaussian data the ODE is linear in (x - mu), so each Euler step multiplies it by
    # 1 + sigma_i (sigma_{i+1} - sigma_i) / (s^2 + sigma_i^2); check the product exactly.
    mu, s = torch.tensor([0.5, -1.0], dtype=torch.float64), 0.4
    sigmas = edm.karras_sigmas(12, 0.002, 80.0).double()
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80.0
    out = edm.sample_euler(_gaussian_data_denoiser(mu, s), x, sigmas)
    factor = torch.prod(1 + sigmas[:-1] * sigmas.diff() / (s**2 + sigmas[:-1] ** 2))
    torch.testing.assert_close(out - mu, (x - mu) * factor, rtol=1e-10, atol=1e-12)
    # and with many steps it converges to the exact flow: (x - mu) * s / sqrt(s^2 + sigma_max^2)
    sigmas = edm.karras_sigmas(2000, 0.002, 80.0).double()
    out = edm.sample_euler(_gaussian_data_denoiser(mu, s), x, sigmas)
    exact = (x - mu) * s / math.sqrt(s**2 + 80.0**2)
    torch.testing.assert_close(out - mu, exact, rtol=5e-3, atol=0)


def test_callback_sees_every_step_and_its_return_conditions_the_next_step():
    seen = []

    def model(x, sigma, feedback=None):
        seen.append(None if feedback is None else float(feedback))
        return torch.zeros_like(x)

    def callback(info):
        assert set(info) == {"i", "sigma", "sigma_next", "x", "denoised"}
        return {"feedback": torch.tensor(float(info["i"]))}

    sigmas = edm.karras_sigmas(4, 0.01, 10.0)
    edm.sample_euler(model, torch.randn(2, 3), sigmas, callback=callback, cond={"feedback": None})
    assert seen == [None, 0.0, 1.0, 2.0]  # step i sees what the callback returned at step i-1


@pytest.mark.parametrize("sigma_data", [0.5, 1.0])
@pytest.mark.parametrize("sigma", [0.01, 0.5, 2.0, 80.0])
def test_preconditioning_with_sigma_data_is_edms_general_form(sigma, sigma_data):
    """EDM (Karras et al. 2022, Table 1): with data of std sigma_data, F's input and its
    effective training target both have unit variance, and lambda * c_out^2 = 1."""
    s = torch.tensor(sigma, dtype=torch.float64)
    sd = sigma_data
    assert edm.c_skip(s, sd).item() == pytest.approx(sd**2 / (sigma**2 + sd**2), rel=1e-12)
    assert edm.c_out(s, sd).item() == pytest.approx(-sigma * sd / math.sqrt(sigma**2 + sd**2), rel=1e-12)
    assert (edm.loss_weight(s, sd) * edm.c_out(s, sd) ** 2).item() == pytest.approx(1.0, rel=1e-12)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(200_000, generator=g, dtype=torch.float64) * sd
    x = x0 + sigma * torch.randn(200_000, generator=g, dtype=torch.float64)
    target = (x0 - edm.c_skip(s, sd) * x) / edm.c_out(s, sd)
    assert target.std().item() == pytest.approx(1.0, abs=0.01)
    assert (edm.c_in(s, sd) * x).std().item() == pytest.approx(1.0, abs=0.01)


def test_edm_stochastic_sampler_lands_on_a_point_is_pure_and_per_sample():
    mu = torch.tensor([0.3, -0.8, 1.5], dtype=torch.float64)
    sigmas = edm.karras_sigmas(25, 0.002, 80.0).double()
    x = sigmas[0] * torch.randn(8, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ideal = lambda x, s: mu.expand_as(x)  # noqa: E731
    torch.testing.assert_close(edm.sample_euler_churn(ideal, x, sigmas), mu.expand(8, 3), atol=1e-9, rtol=0)

    # on a Gaussian data distribution the churn's fresh noise is what makes it differ from Euler
    model = _gaussian_data_denoiser(torch.zeros(3, dtype=torch.float64), 1.0)
    a, b = edm.sample_euler_churn(model, x, sigmas), edm.sample_euler_churn(model, x, sigmas)
    torch.testing.assert_close(a, b, atol=0, rtol=0)  # a pure function of its inputs
    assert not torch.allclose(a, edm.sample_euler(model, x, sigmas))
    torch.testing.assert_close(edm.sample_euler_churn(model, x, sigmas, churn=0.0), edm.sample_euler(model, x, sigmas))
    # a sample's noise comes from its own start: the same object in another batch, the same result
    torch.testing.assert_close(edm.sample_euler_churn(model, x[2:5], sigmas), a[2:5], atol=0, rtol=0)
    assert edm.SAMPLERS["euler_churn"] is edm.sample_euler_churn
