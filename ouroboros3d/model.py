"""Ouroboros3D: the denoiser, the reconstructor and the 3D feedback loop between them.

:class:`Ouroboros3D` holds the parts (latent autoencoder, image encoder, the EDM-wrapped
multi-view denoiser F, the Gaussian reconstructor G) and the one step they share, from an
x0 prediction to feedback maps: decode, reconstruct Gaussians, render them at the views'
cameras into an RGB texture map and a canonical coordinate map (:meth:`reconstruct`).

:func:`training_losses` is Algorithm 1 and :func:`sample` is Algorithm 2 of the
supplementary; the recursion runs through the EDM sampler's callback.

Tensor conventions: images are (B, V, 3, H, W) in [0, 1], view 0 is the input view;
cameras are ``K`` (B, V, 3, 3) and ``c2w`` (B, V, 4, 4) in the convention of
:mod:`ouroboros3d.geometry.cameras`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .diffusion import edm
from .gaussians.container import Gaussians
from .gaussians.splatting import render
from .geometry.cameras import plucker_rays
from .geometry.ccm import CCMNormalization, depth_to_ccm

__all__ = [
    "Draws",
    "Ouroboros3D",
    "Reconstruction",
    "SampleResult",
    "StepRecord",
    "denoiser_losses",
    "initial_noise",
    "recolour",
    "reconstructor_losses",
    "sample",
    "sample_kwargs",
    "training_losses",
]


@dataclass
class Reconstruction:
    """G's output for one x0 prediction and its renders at the batch's cameras."""

    gaussians: Gaussians
    rgb: torch.Tensor  # (B, V, 3, H, W) over a white background
    alpha: torch.Tensor  # (B, V, 1, H, W)
    ccm: torch.Tensor  # (B, V, 3, H, W)

    def feedback(self, maps: Sequence[str]) -> dict[str, torch.Tensor]:
        """The maps fed back to the denoiser (eq. 10-11), detached: feedback is conditioning."""
        return {name: getattr(self, name).detach() for name in maps}


class Ouroboros3D(nn.Module):
    """The model: ``autoencoder`` (pixel or VAE latents), ``denoiser`` = EDMPrecond(F) where
    F owns its image encoder and feedback networks, and the Gaussian ``reconstructor`` G.

    The maps fed back are those F has feedback networks for; F built without any is the
    no-feedback model.
    """

    def __init__(
        self,
        autoencoder: nn.Module,
        denoiser_net: nn.Module,
        reconstructor: nn.Module,
        *,
        recon_views: Sequence[int] = (0, 2, 4, 6),
        ccm_norm: CCMNormalization = CCMNormalization(),
        joint: bool = True,
        residual: bool = False,
        sigma_data: float = 1.0,
    ):
        super().__init__()
        feedback_maps = tuple(denoiser_net.feedback_networks)
        if feedback_maps and not joint:
            raise ValueError("3D feedback needs joint training: the paper's Table 2 has no feedback without it")
        self.autoencoder = autoencoder
        self.denoiser = edm.EDMPrecond(denoiser_net, sigma_data)
        self.reconstructor = reconstructor
        self.feedback_maps = feedback_maps
        self.recon_views = list(recon_views)
        self.ccm_norm = ccm_norm
        # joint: G learns from F's noisy predictions and sees sigma; otherwise from clean views
        self.joint = joint
        # residual: diffusion runs on the views minus the input view's latent (see encode_views)
        self.residual = residual

    def forward(
        self,
        batch: Mapping[str, torch.Tensor],
        generator: torch.Generator | Draws,
        objective: str = "joint",
        **kwargs,
    ) -> dict:
        """A training objective's losses; ``forward`` so DDP can wrap the model.

        ``generator``: a :class:`Draws` (per-sample generators, as training uses) or one
        generator for everything.

        ``objective``: "joint" (Algorithm 1, :func:`training_losses`), "denoiser" (F alone,
        :func:`denoiser_losses`) or "reconstructor" (G alone, :func:`reconstructor_losses`).
        """
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown training objective {objective!r}; have {sorted(OBJECTIVES)}")
        return OBJECTIVES[objective](self, batch, generator, **kwargs)

    @property
    def has_feedback(self) -> bool:
        return bool(self.feedback_maps)

    # --- the space diffusion runs in ------------------------------------------------

    def encode_views(self, views: torch.Tensor, input_view: torch.Tensor) -> torch.Tensor:
        """Views (B, V, 3, H, W) -> the denoised tensor: their latents, or with ``residual``
        their latents minus the input view's, so D = 0 is "copy the input view everywhere"
        and the network learns only what changes with the camera (a small-scale lever)."""
        x = self.autoencoder.encode(views)
        return x - self.autoencoder.encode(input_view[:, None]) if self.residual else x

    def decode_views(self, x: torch.Tensor, input_view: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`encode_views` (not clamped)."""
        if self.residual:
            x = x + self.autoencoder.encode(input_view[:, None])
        return self.autoencoder.decode(x)

    # --- conditioning ------------------------------------------------------------

    def condition(self, input_view: torch.Tensor, K: torch.Tensor, c2w: torch.Tensor, drop=None) -> dict:
        """Denoiser conditioning: the input view's latent and embedding, per-view Plücker rays.

        ``drop`` (B,) bool zeroes the image conditioning of those samples (classifier-free
        guidance's unconditional branch, and conditioning dropout in training).
        """
        cond_latent = self.autoencoder.encode(input_view[:, None])[:, 0]
        cond_embedding = self.denoiser.net.encode_image(input_view)
        if drop is not None:
            keep = (~drop).to(cond_latent.dtype)
            cond_latent = cond_latent * keep.view(-1, 1, 1, 1)
            cond_embedding = cond_embedding * keep.view(-1, 1, 1)
        h, w = cond_latent.shape[-2:]
        return {
            "cond_latent": cond_latent,
            "cond_embedding": cond_embedding,
            "plucker": plucker_rays(_scale_intrinsics(K, h / input_view.shape[-2]), c2w, h, w),
        }

    def zero_feedback(self, like: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """Feedback at the first step (and outside the feedback window): all-zero maps."""
        if not self.has_feedback:
            return None
        return {name: torch.zeros_like(like) for name in self.feedback_maps}

    # --- the 3D side ---------------------------------------------------------------

    def reconstruct(
        self, images: torch.Tensor, K: torch.Tensor, c2w: torch.Tensor, sigma: torch.Tensor | None
    ) -> Reconstruction:
        """Gaussians from ``images`` (B, V, 3, H, W) seen by ``recon_views``, rendered at all V views.

        ``sigma`` (B,) is the noise level of the prediction G sees; a separately trained G
        (``joint=False``) only ever saw clean views and gets None.
        """
        sigma = sigma if self.joint else None
        height, width = images.shape[-2:]
        idx = self.recon_views
        size = self.reconstructor.image_size
        inputs = images[:, idx]
        if size != height:
            inputs = F.interpolate(inputs.flatten(0, 1), size=(size, size), mode="bilinear", antialias=True)
            inputs = inputs.unflatten(0, (images.shape[0], len(idx)))
        rays = plucker_rays(_scale_intrinsics(K[:, idx], size / height), c2w[:, idx], size, size)
        gaussians = self.reconstructor(inputs, rays, sigma)
        out = render(gaussians, K, c2w, height, width)
        ccm = depth_to_ccm(out.depth, K, c2w, self.ccm_norm)
        return Reconstruction(gaussians, out.rgb, out.alpha, ccm)


def _scale_intrinsics(K: torch.Tensor, factor: float) -> torch.Tensor:
    """Intrinsics of the same camera on an image resized by ``factor``."""
    if factor == 1:
        return K
    scale = K.new_tensor([factor, factor, 1.0])
    return K * scale[:, None]


# --- Algorithm 1 -------------------------------------------------------------------


@dataclass(frozen=True)
class LossWeights:
    recon: float = 1.0  # the reconstruction loss against the multi-view loss
    alpha: float = 1.0  # silhouette MSE inside the reconstruction loss (LGM's mask loss)
    lpips: float = 0.0  # LPIPS inside the reconstruction loss; needs pretrained weights


@dataclass(frozen=True)
class Draws:
    """Where a training step's randomness comes from.

    ``samples``: one generator per sample of the batch, for that sample's own draws (its
    recolouring, sigma, noise and conditioning dropout). Training seeds each from (seed, step,
    the sample's index in the step's global batch), so a sample draws the same whichever rank
    holds it and however the batch is split. ``step``: the batch-wide draws, Algorithm 1's
    second-pass coin, seeded from (seed, step): the same on every rank.
    """

    samples: Sequence[torch.Generator]
    step: torch.Generator

    @classmethod
    def of(cls, generator: torch.Generator | Draws, batch_size: int) -> Draws:
        """``generator`` as :class:`Draws`; one plain generator serves every draw, in turn."""
        if isinstance(generator, Draws):
            if len(generator.samples) != batch_size:
                raise ValueError(f"{len(generator.samples)} sample generators for a batch of {batch_size}")
            return generator
        return cls([generator] * batch_size, generator)


def recolour(batch: Mapping[str, torch.Tensor], generator: torch.Generator | Draws) -> dict[str, torch.Tensor]:
    """The batch with each object's RGB channels permuted, the same way in every view.

    The renders are Lambertian under white light on a white background, so a channel
    permutation is an exact render of the same shape in another colour: six colours per
    object for free, and the model cannot memorise shape -> colour; it must copy the colour
    from the input view.
    """
    views = batch["views"]
    perms = [torch.randperm(3, generator=g) for g in Draws.of(generator, views.shape[0]).samples]
    index = torch.stack(perms).to(views.device)
    out = dict(batch)
    out["views"] = torch.stack([v[:, p] for v, p in zip(views, index, strict=True)])
    out["input_view"] = out["views"][:, 0]
    return out


def _noise_draws(x: torch.Tensor, draws: Draws, p_mean: float, p_std: float, mixture, cond_dropout: float):
    """Each sample's sigma, unit noise and conditioning-dropout flag, from its own generator."""
    gens = draws.samples
    sigma = torch.cat([edm.sample_training_sigma(1, p_mean, p_std, g, mixture=mixture) for g in gens]).to(x.device)
    noise = torch.stack([torch.randn(x.shape[1:], generator=g) for g in gens]).to(x)
    drop = torch.cat([torch.rand(1, generator=g) for g in gens]).to(x.device) < cond_dropout
    return sigma, noise, drop


def denoiser_losses(
    model: Ouroboros3D,
    batch: Mapping[str, torch.Tensor],
    generator: torch.Generator | Draws,
    *,
    cond_dropout: float = 0.1,
    p_mean: float = 1.0,
    p_std: float = 1.6,
    noise_mixture: tuple[float, float, float] | None = None,
    **_: object,
) -> dict[str, torch.Tensor]:
    """F alone as plain multi-view diffusion (eq. 3), no G and no feedback: F's pretraining,
    the analogue of SVD fine-tuned to orbits. Feedback networks, if any, see zero maps."""
    views, K, c2w = batch["views"], batch["K"], batch["c2w"]
    b = views.shape[0]
    x = model.encode_views(views, batch["input_view"])
    sigma, noise, drop = _noise_draws(x, Draws.of(generator, b), p_mean, p_std, noise_mixture, cond_dropout)
    cond = model.condition(batch["input_view"], K, c2w, drop=drop)
    edm_loss = edm.EDMLoss(sigma_data=model.denoiser.sigma_data)
    loss, _ = edm_loss(model.denoiser, x, sigma=sigma, noise=noise, **cond, feedback=model.zero_feedback(views))
    loss_mv = loss.mean()
    return {"loss_mv": loss_mv, "loss": loss_mv}


def reconstruction_loss(
    recon: Reconstruction,
    batch: Mapping[str, torch.Tensor],
    weights: LossWeights,
    lpips: nn.Module | None = None,
) -> dict[str, torch.Tensor]:
    """G's loss: RGB MSE + silhouette MSE (+ LPIPS) of its renders against the true views (LGM's)."""
    views = batch["views"]
    loss_rgb = F.mse_loss(recon.rgb, views)
    loss_alpha = F.mse_loss(recon.alpha, batch["alpha"])
    loss_recon = loss_rgb + weights.alpha * loss_alpha
    out = {"loss_rgb": loss_rgb, "loss_alpha": loss_alpha}
    if weights.lpips > 0:
        if lpips is None:
            raise ValueError("an LPIPS weight > 0 needs an LPIPS model (ouroboros3d.evaluation.perceptual.load_lpips)")
        loss_lpips = lpips(recon.rgb.flatten(0, 1) * 2 - 1, views.flatten(0, 1) * 2 - 1).mean()
        loss_recon = loss_recon + weights.lpips * loss_lpips
        out["loss_lpips"] = loss_lpips
    out["loss_recon"] = loss_recon
    return out


def reconstructor_losses(
    model: Ouroboros3D,
    batch: Mapping[str, torch.Tensor],
    generator: torch.Generator | Draws,
    *,
    weights: LossWeights = LossWeights(),
    lpips: nn.Module | None = None,
    **_: object,
) -> dict[str, torch.Tensor]:
    """G alone on the ground-truth views: G's pretraining, the analogue of LGM."""
    recon = model.reconstruct(batch["views"], batch["K"], batch["c2w"], None)
    out = reconstruction_loss(recon, batch, weights, lpips)
    out["loss"] = weights.recon * out["loss_recon"]
    return out


def training_losses(
    model: Ouroboros3D,
    batch: Mapping[str, torch.Tensor],
    generator: torch.Generator | Draws,
    *,
    feedback_prob: float = 0.5,
    cond_dropout: float = 0.1,
    p_mean: float = 1.0,
    p_std: float = 1.6,
    noise_mixture: tuple[float, float, float] | None = None,
    weights: LossWeights = LossWeights(),
    lpips: nn.Module | None = None,
) -> dict[str, torch.Tensor]:
    """One training example's losses, Algorithm 1.

    A model built with ``joint=False`` trains G on the ground-truth views instead of F's
    predictions (the "no joint training" row of Table 2): no gradient passes between F and G.
    All randomness comes from ``generator`` so a step is reproducible from its seed: with
    :class:`Draws`, each sample's sigma, noise and dropout from its own generator and the
    second-pass coin from the step's.
    """
    views, K, c2w = batch["views"], batch["K"], batch["c2w"]
    draws = Draws.of(generator, views.shape[0])

    x = model.encode_views(views, batch["input_view"])
    sigma, noise, drop = _noise_draws(x, draws, p_mean, p_std, noise_mixture, cond_dropout)
    cond = model.condition(batch["input_view"], K, c2w, drop=drop)
    # eq. (3) on the same noisy views in both passes; a feedback pass's loss replaces the first's
    edm_loss = edm.EDMLoss(sigma_data=model.denoiser.sigma_data)

    loss, pred_x = edm_loss(model.denoiser, x, sigma=sigma, noise=noise, **cond, feedback=model.zero_feedback(views))
    pred_i = model.decode_views(pred_x, batch["input_view"])
    recon = model.reconstruct(pred_i if model.joint else views, K, c2w, sigma)
    second_pass = model.has_feedback and torch.rand((), generator=draws.step).item() > 1 - feedback_prob
    if second_pass:
        feedback = recon.feedback(model.feedback_maps)
        loss, _ = edm_loss(model.denoiser, x, sigma=sigma, noise=noise, **cond, feedback=feedback)

    loss_mv = loss.mean()
    out = {"loss_mv": loss_mv, **reconstruction_loss(recon, batch, weights, lpips)}
    out["loss"] = loss_mv + weights.recon * out["loss_recon"]
    out["second_pass"] = torch.tensor(float(second_pass))
    return out


OBJECTIVES: dict[str, Callable[..., dict[str, torch.Tensor]]] = {
    "joint": training_losses,
    "denoiser": denoiser_losses,
    "reconstructor": reconstructor_losses,
}


# --- Algorithm 2 -------------------------------------------------------------------


@dataclass
class StepRecord:
    """What the recursive loop produced at one denoising step (for the step figures)."""

    i: int
    sigma: float
    views: torch.Tensor  # decoded x0 prediction (B, V, 3, H, W)
    recon: Reconstruction
    fed_back: bool  # whether this step's maps conditioned the next step


@dataclass
class SampleResult:
    views: torch.Tensor  # final generated views (B, V, 3, H, W) in [0, 1]
    gaussians: Gaussians | None  # the last step's reconstruction (None without G in the loop)
    recon: Reconstruction | None
    steps: list[StepRecord] = field(default_factory=list)


def guidance_scales(num_views: int, min_scale: float, max_scale: float) -> torch.Tensor:
    """SVD's per-frame guidance: linear from ``min_scale`` at the input view to ``max_scale``."""
    return torch.linspace(min_scale, max_scale, num_views)


def feedback_window(num_steps: int, start: float) -> list[bool]:
    """Which steps' reconstructions are fed back: those at or after ``start`` of the way.

    ``start`` = 0 feeds back at every step (Table 3's "0-25"), 0.4 in the last 60% of the
    steps ("10-25"), 0.8 in the last 20% ("20-25").
    """
    if not 0.0 <= start <= 1.0:
        raise ValueError(f"feedback start must lie in [0, 1], got {start}")
    first = round(start * num_steps)
    return [i >= first for i in range(num_steps)]


def sample_kwargs(settings, **overrides) -> dict:
    """:func:`sample`'s keyword arguments from params ``sample`` (a ``SampleParams``), then ``overrides``.

    The one place the params map onto the sampler, so evaluation, generation, validation and
    the benchmarks sample alike.
    """
    kwargs = dict(
        steps=settings.steps,
        sigma_min=settings.sigma_min,
        sigma_max=settings.sigma_max,
        guidance=tuple(settings.guidance),
        guidance_sigmas=settings.guidance_sigmas,
        feedback_start=settings.feedback_start,
        sampler=edm.SAMPLERS[settings.sampler],
        mixed_precision=settings.mixed_precision,
    )
    return kwargs | overrides


def initial_noise(model: Ouroboros3D, seeds: Sequence[int], num_views: int, height: int, width: int) -> torch.Tensor:
    """The sampler's unit-variance starting noise, latent-shaped: (B, V, C, h, w), object b's
    drawn from a generator of its own ``seeds[b]`` alone (batch-independent, exact on resume).

    The one place it is built: sampling, the evaluation and the validation all start here.
    """
    ae = model.autoencoder
    shape = (num_views, ae.latent_channels, height // ae.downscale, width // ae.downscale)
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


@torch.no_grad()
def sample(
    model: Ouroboros3D,
    input_view: torch.Tensor,
    K: torch.Tensor,
    c2w: torch.Tensor,
    *,
    steps: int = 25,
    sigma_min: float = 0.002,
    sigma_max: float = 700.0,
    guidance: tuple[float, float] = (1.0, 2.5),
    guidance_sigmas: tuple[float, float] | None = None,
    feedback_start: float = 0.0,
    reconstruct: str = "every_step",
    seeds: Sequence[int] | None = None,
    keep_steps: bool = False,
    sampler=edm.sample_euler,
    on_step: Callable[[dict], None] | None = None,
    mixed_precision: str = "no",
) -> SampleResult:
    """Algorithm 2: generate V views of ``input_view`` (B, 3, H, W) and their 3D Gaussians.

    At every step the callback decodes the x0 prediction, reconstructs and renders it, and
    returns the RGB/CCM maps as the next step's feedback (zeros outside the feedback
    window). ``reconstruct`` = "final" makes the loop plain multi-view diffusion with G run
    once on the final views ("generate, then reconstruct"); "none" skips G altogether.

    ``on_step``, if given, is called once per step with ``{"i", "steps", "sigma", "record"}``,
    where ``record`` is that step's :class:`StepRecord` (None unless ``reconstruct`` is
    "every_step"): for progress bars and for keeping only some steps' records.

    ``guidance_sigmas`` = (lo, hi) applies the guidance only at noise levels in that interval
    (Kynkäänniemi et al. 2024); None applies it at every step.

    ``seeds`` (one per object; None: 0, 1, ..., B-1) seed each object's initial noise
    (:func:`initial_noise`): an object's views do not depend on the batch it is sampled in.
    With guidance, the conditional and unconditional branches run as one batch of 2B (as
    diffusers' SVD pipeline), one denoiser pass per step.

    ``mixed_precision`` = "bf16" runs F's and G's networks under bf16 autocast (CPU AMX, GPU
    tensor cores); the EDM scalings, the sampler's updates, camera rays, the rasterizer and
    the CCM stay float32 (each of them casts or disables autocast itself).
    """
    if mixed_precision not in ("no", "bf16"):
        raise ValueError(f"mixed_precision must be 'no' or 'bf16', got {mixed_precision!r}")
    with torch.autocast(input_view.device.type, torch.bfloat16, enabled=mixed_precision == "bf16"):
        if reconstruct not in ("every_step", "final", "none"):
            raise ValueError(f"reconstruct must be every_step, final or none, got {reconstruct!r}")
        recursive = reconstruct == "every_step"
        b, v = input_view.shape[0], K.shape[1]
        height, width = input_view.shape[-2:]
        cond = model.condition(input_view, K, c2w)
        sigmas = edm.karras_sigmas(steps, sigma_min, sigma_max).to(input_view.device)
        seeds = range(b) if seeds is None else seeds
        if len(seeds) != b:
            raise ValueError(f"{len(seeds)} seeds for a batch of {b} objects")
        x = sigmas[0] * initial_noise(model, seeds, v, height, width).to(input_view)
        like = torch.zeros(b, v, 3, height, width, device=input_view.device, dtype=input_view.dtype)
        zeros = model.zero_feedback(like)
        window = feedback_window(steps, feedback_start)
        scales = guidance_scales(v, *guidance).to(x).view(1, v, 1, 1, 1)
        guided = tuple(guidance) != (1.0, 1.0)
        # the unconditional branch: the same conditioning with the image dropped, as in training
        uncond = cond | {k: torch.zeros_like(cond[k]) for k in ("cond_latent", "cond_embedding")}

        def denoiser(x, sigma, feedback=None, **c):
            if not guided or (guidance_sigmas is not None and not guidance_sigmas[0] <= sigma <= guidance_sigmas[1]):
                return model.denoiser(x, sigma, **c, feedback=feedback)
            # both branches in one pass: [conditional; unconditional], the same x and feedback
            both = {k: torch.cat([c[k], uncond[k]]) for k in c}
            fed = None if feedback is None else {k: torch.cat([m, m]) for k, m in feedback.items()}
            out, out_uncond = model.denoiser(torch.cat([x, x]), sigma, **both, feedback=fed).chunk(2)
            return out_uncond + scales * (out - out_uncond)

        records: list[StepRecord] = []
        last: list[Reconstruction | None] = [None]

        def callback(info):
            if not recursive:
                if on_step is not None:
                    on_step({"i": info["i"], "steps": steps, "sigma": float(info["sigma"]), "record": None})
                return None
            views = model.decode_views(info["denoised"], input_view).clamp(0, 1)
            recon = model.reconstruct(views, K, c2w, info["sigma"].expand(b))
            last[0] = recon
            fed = model.has_feedback and info["i"] + 1 < steps and window[info["i"] + 1]
            record = StepRecord(info["i"], float(info["sigma"]), views, recon, fed) if keep_steps or on_step else None
            if keep_steps:
                records.append(record)
            if on_step is not None:
                on_step({"i": info["i"], "steps": steps, "sigma": record.sigma, "record": record})
            if not model.has_feedback:
                return None
            return {"feedback": recon.feedback(model.feedback_maps) if fed else zeros}

        x = sampler(denoiser, x, sigmas, callback=callback, cond={**cond, "feedback": zeros})
        views = model.decode_views(x, input_view).clamp(0, 1)
        recon = last[0]
        if reconstruct == "final":
            recon = model.reconstruct(views, K, c2w, sigmas[-2].expand(b))
        return SampleResult(views, None if recon is None else recon.gaussians, recon, records)
