"""EDM formulation of the paper's supplementary, section 1.1 (equations 2-9).

The network ``F`` knows nothing of EDM: :class:`EDMPrecond` wraps it and turns it
into the denoiser ``D(x; sigma)`` of eq. (4). The loss is a small callable and the
samplers are pure functions sharing one signature ``(model, x, sigmas, callback)``
in the manner of k-diffusion, where ``model(x, sigma, **cond)`` is a denoiser.

The sampler callback is how Algorithm 2's recursive loop hooks in: it receives the
step index, sigma, the current ``x`` and the x0 prediction ``denoised``, and may return a
dict of conditioning that replaces entries of ``cond`` for the next step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = [
    "SAMPLERS",
    "EDMLoss",
    "EDMPrecond",
    "c_in",
    "c_noise",
    "c_out",
    "c_skip",
    "karras_sigmas",
    "loss_weight",
    "sample_euler",
    "sample_euler_churn",
    "sample_heun",
    "sample_training_sigma",
]


# --- preconditioning, eq. (5)-(9) -----------------------------------------------------
# The paper writes them with sigma_data = 1 (SVD's unit-variance latents), the default here.
# EDM's general form takes the data's standard deviation sigma_data; pixels in [-1, 1] have
# about 0.5 (EDM's value), and then D's output at high noise is scaled to the data, not to 1.


def c_in(sigma: torch.Tensor, sigma_data: float = 1.0) -> torch.Tensor:
    """Eq. (5): input scale ``1 / sqrt(sigma^2 + sigma_data^2)``."""
    return 1.0 / torch.sqrt(sigma**2 + sigma_data**2)


def c_out(sigma: torch.Tensor, sigma_data: float = 1.0) -> torch.Tensor:
    """Eq. (6): output scale ``-sigma sigma_data / sqrt(sigma^2 + sigma_data^2)`` (the v-prediction sign of SVD)."""
    return -sigma * sigma_data / torch.sqrt(sigma**2 + sigma_data**2)


def c_skip(sigma: torch.Tensor, sigma_data: float = 1.0) -> torch.Tensor:
    """Eq. (7): skip scale ``sigma_data^2 / (sigma^2 + sigma_data^2)``."""
    return sigma_data**2 / (sigma**2 + sigma_data**2)


def c_noise(sigma: torch.Tensor) -> torch.Tensor:
    """Eq. (8): noise conditioning ``0.25 * ln(sigma)``."""
    return 0.25 * torch.log(sigma)


def loss_weight(sigma: torch.Tensor, sigma_data: float = 1.0) -> torch.Tensor:
    """Eq. (9): ``lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2``."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def _per_sample(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar or per-sample sigma of shape (B,) against x of shape (B, ...)."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    if sigma.shape != (x.shape[0],):
        raise ValueError(f"sigma must be a scalar or have shape ({x.shape[0]},), got {tuple(sigma.shape)}")
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))


class EDMPrecond(nn.Module):
    """Denoiser ``D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)`` of eq. (4).

    ``net(x_in, c_noise, **cond)`` is any network; it receives the scaled input and the
    per-sample noise embedding input of shape (B,). Extra conditioning passes through.
    """

    def __init__(self, net: nn.Module, sigma_data: float = 1.0):
        super().__init__()
        self.net = net
        self.sigma_data = sigma_data

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, **cond: Any) -> torch.Tensor:
        # the scalings in float32, whatever the net's precision: sigma^2 at SVD's sigma_max = 700
        # is 490,000, beyond float16 (as NVlabs/edm)
        x32, sd = x.to(torch.float32), self.sigma_data
        s = _per_sample(sigma, x32)
        f = self.net((c_in(s, sd) * x32).to(x.dtype), c_noise(s).flatten(), **cond)
        return (c_skip(s, sd) * x32 + c_out(s, sd) * f.to(torch.float32)).to(x.dtype)


def sample_training_sigma(
    n: int,
    p_mean: float = 1.0,
    p_std: float = 1.6,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    mixture: tuple[float, float, float] | None = None,
) -> torch.Tensor:
    """Training noise levels, ``ln sigma ~ N(P_mean, P_std^2)`` (paper: 1.0, 1.6).

    ``mixture`` = (share, p_mean2, p_std2) draws that share of the samples from a second
    log-normal instead: one setting can train both the low-noise detail and the high-noise
    conditional mean.
    """
    z = torch.randn(n, generator=generator, device=device)
    if mixture is None:
        return torch.exp(p_mean + p_std * z)
    share, p_mean2, p_std2 = mixture
    second = torch.rand(n, generator=generator, device=device) < share
    return torch.exp(torch.where(second, p_mean2 + p_std2 * z, p_mean + p_std * z))


class EDMLoss:
    """Denoising score matching, eq. (3), weighted by eq. (9).

    Returns the per-sample loss ``lambda(sigma) * mean((D(x0 + sigma n; sigma) - x0)^2)`` and the
    denoised prediction, so a caller (Algorithm 1) can reuse it. ``sigma`` and the unit noise
    ``n`` are drawn from ``generator`` unless given: Algorithm 1 draws them per sample and
    scores its second, feedback-conditioned pass on the same noisy input.
    """

    def __init__(self, p_mean: float = 1.0, p_std: float = 1.6, sigma_data: float = 1.0):
        self.p_mean = p_mean
        self.p_std = p_std
        self.sigma_data = sigma_data

    def __call__(
        self,
        denoiser: Callable[..., torch.Tensor],
        x0: torch.Tensor,
        sigma: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        **cond: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if sigma is None:
            sigma = sample_training_sigma(x0.shape[0], self.p_mean, self.p_std, generator).to(x0)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        s = _per_sample(sigma, x0)
        denoised = denoiser(x0 + s * noise, sigma, **cond)
        per_sample = ((denoised - x0) ** 2).flatten(1).mean(1)
        return loss_weight(sigma, self.sigma_data) * per_sample, denoised


# --- sampling --------------------------------------------------------------------


def karras_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 700.0, rho: float = 7.0) -> torch.Tensor:
    """The EDM/Karras schedule: ``n`` decreasing noise levels followed by a final 0.

    SVD's defaults are sigma_min = 0.002, sigma_max = 700.
    """
    if n < 1:
        raise ValueError(f"need at least one sampling step, got {n}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).float()


Callback = Callable[[Mapping[str, Any]], Mapping[str, Any] | None]


def _notify(callback: Callback | None, cond: dict, **info: Any) -> None:
    if callback is None:
        return
    update = callback(info)
    if update:
        cond.update(update)


@torch.no_grad()
def sample_euler(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    callback: Callback | None = None,
    cond: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """Euler integration of the probability-flow ODE, eq. (1), with ``dx/dsigma = (x - D)/sigma``.

    ``x`` starts as noise at ``sigmas[0]``. After each denoiser call the callback gets
    ``{"i", "sigma", "sigma_next", "x", "denoised"}`` and may return conditioning updates.
    """
    cond = dict(cond or {})
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma, **cond)
        _notify(callback, cond, i=i, sigma=sigma, sigma_next=sigma_next, x=x, denoised=denoised)
        x = x + (x - denoised) / sigma * (sigma_next - sigma)
    return x


@torch.no_grad()
def sample_heun(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    callback: Callback | None = None,
    cond: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """Heun's second-order method (EDM Algorithm 1 without churn); Euler on the last step."""
    cond = dict(cond or {})
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma, **cond)
        d = (x - denoised) / sigma
        x_next = x + d * (sigma_next - sigma)
        if sigma_next > 0:
            d_next = (x_next - model(x_next, sigma_next, **cond)) / sigma_next
            x_next = x + 0.5 * (d + d_next) * (sigma_next - sigma)
        _notify(callback, cond, i=i, sigma=sigma, sigma_next=sigma_next, x=x, denoised=denoised)
        x = x_next
    return x


@torch.no_grad()
def sample_euler_churn(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    callback: Callback | None = None,
    cond: Mapping[str, Any] | None = None,
    churn: float = 0.41,
) -> torch.Tensor:
    """EDM's stochastic sampler (Karras et al. 2022, Algorithm 2) with Euler steps: before each
    step the noise is raised from sigma to ``sigma_hat = sigma (1 + gamma)``, ``gamma = churn``
    (at most sqrt(2) - 1), by fresh noise; then an Euler step from sigma_hat. Under-trained
    models drift less with it (GeNVS-unofficial found deterministic sampling poor).

    Each sample's fresh noise comes from a generator seeded by its own starting noise, so the
    sampler stays a pure function of its inputs and a sample does not depend on its batch.
    """
    cond = dict(cond or {})
    gamma = min(churn, 2**0.5 - 1)
    seeds = (x.detach().double().abs().flatten(1).sum(1) * 1e6).long() % (2**62)
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        sigma_hat = sigma * (1 + gamma) if sigma_next > 0 else sigma
        if sigma_hat > sigma:
            eps = torch.stack([torch.randn(x.shape[1:], generator=g) for g in generators]).to(x)
            x = x + (sigma_hat**2 - sigma**2).sqrt() * eps
        denoised = model(x, sigma_hat, **cond)
        _notify(callback, cond, i=i, sigma=sigma_hat, sigma_next=sigma_next, x=x, denoised=denoised)
        x = x + (x - denoised) / sigma_hat * (sigma_next - sigma_hat)
    return x


# params `sample.sampler` -> the sampler; every caller looks it up here
SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "euler_churn": sample_euler_churn,
}
