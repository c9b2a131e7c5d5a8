"""Ouroboros3D: the denoiser, the reconstructor and the 3D feedback loop between them.

:class:`Ouroboros3D` holds the parts (latent autoencoder, image encoder, the EDM-wrapped
multi-view denoiser F, the Gaussian reconstructor G) and the one step they share, from an
x0 prediction to feedback maps: decode, reconstruct Gaussians, render them at the views'
cameras into an RGB texture map and a canonical coordinate map (:meth:`reconstruct`).

:func:`training_losses` is Algorithm 1 of the supplementary (with the pretraining objectives,
F alone and G alone); Algorithm 2, the recursive sampler, is :mod:`ouroboros3d.sampling`.

Tensor conventions: images are (B, V, 3, H, W) in [0, 1], view 0 is the input view;
cameras are ``K`` (B, V, 3, 3) and ``c2w`` (B, V, 4, 4) in the convention of
:mod:`ouroboros3d.geometry.cameras`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

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
    "denoiser_losses",
    "recolour",
    "reconstructor_losses",
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
