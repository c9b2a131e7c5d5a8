"""Quick multi-view scores on the validation split: for learning curves and settings sweeps.

The validation split holds objects that are neither trained on nor evaluated, so settings
chosen here never see the eval split. The scores are PSNRs of the non-input views (as the
evaluation's protocol) of:

* ``x0_psnr``: the 1-step sample, D(sigma_max * noise; sigma_max): the conditional mean of
  the views given the input view and the cameras, which the high-noise regime must learn first;
* ``mv_psnr``: the views of a full sample (plain multi-view diffusion, no G);
* ``copy_input_psnr`` and ``white_psnr``: the trivial baselines on the same objects;
* ``recon_psnr`` (:func:`reconstruction_scores`, for G's pretraining): G's renders from the
  ground-truth views, the ceiling of every 3D column.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..model import Ouroboros3D, sample

__all__ = ["psnr", "reconstruction_scores", "stack_items", "validation_scores"]


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-object PSNR (dB), the mean over views of per-image PSNR; (B, V, 3, H, W) in [0, 1] -> (B,)."""
    mse = ((pred.clamp(0, 1) - target) ** 2).flatten(2).mean(2).clamp_min(1e-10)
    return (-10 * torch.log10(mse)).mean(1)


def stack_items(items: Sequence[Mapping]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([it[k] for it in items]) for k in ("views", "input_view", "K", "c2w")}


@torch.no_grad()
def validation_scores(
    model: Ouroboros3D, batch: Mapping[str, torch.Tensor], seeds: Sequence[int], sample_kwargs: Mapping
) -> dict[str, float]:
    """Mean scores over the objects of ``batch`` (see the module docstring); the model is left as it was.

    ``sample_kwargs`` are :func:`~ouroboros3d.model.sample_kwargs` of the params (the sampler
    the evaluation uses), ``seeds`` each object's noise seed. G stays out of the loop
    (``reconstruct="none"``): the scores are F's.
    """
    was_training = model.training
    model.eval()
    target = batch["views"][:, 1:]
    args = (model, batch["input_view"], batch["K"], batch["c2w"])
    plain = dict(sample_kwargs, reconstruct="none", seeds=seeds)
    x0 = sample(*args, **plain | {"steps": 1, "guidance": (1.0, 1.0)}).views
    views = sample(*args, **plain).views
    model.train(was_training)
    return {
        "x0_psnr": psnr(x0[:, 1:], target).mean().item(),
        "mv_psnr": psnr(views[:, 1:], target).mean().item(),
    } | _baselines(batch)


def _baselines(batch: Mapping[str, torch.Tensor]) -> dict[str, float]:
    target = batch["views"][:, 1:]
    return {
        "copy_input_psnr": psnr(batch["input_view"][:, None].expand_as(target), target).mean().item(),
        "white_psnr": psnr(torch.ones_like(target), target).mean().item(),
    }


@torch.no_grad()
def reconstruction_scores(model: Ouroboros3D, batch: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """G on the ground-truth views of ``batch``: PSNR of its renders at the non-input views."""
    was_training = model.training
    model.eval()
    recon = model.reconstruct(batch["views"], batch["K"], batch["c2w"], None)
    model.train(was_training)
    return {"recon_psnr": psnr(recon.rgb[:, 1:], batch["views"][:, 1:]).mean().item()} | _baselines(batch)
