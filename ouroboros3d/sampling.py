"""Algorithm 2 of the supplementary: sampling with 3D feedback inside every denoising step.

:func:`sample` runs an EDM sampler (:mod:`ouroboros3d.diffusion.edm`, k-diffusion's signature)
whose callback is the recursion: at each step the x0 prediction is decoded, G reconstructs
Gaussians from it, their renders (an RGB map and a CCM) become the next step's feedback
conditioning (:meth:`~ouroboros3d.model.Ouroboros3D.reconstruct`). :func:`sample_kwargs` maps
the params' ``sample`` block onto it, :func:`initial_noise` draws each object's starting noise
from its own seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .diffusion import edm
from .gaussians.container import Gaussians
from .model import Ouroboros3D, Reconstruction

__all__ = [
    "SampleResult",
    "StepRecord",
    "feedback_window",
    "guidance_scales",
    "initial_noise",
    "sample",
    "sample_kwargs",
]


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
