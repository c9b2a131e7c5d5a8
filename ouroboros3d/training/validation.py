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

Each is the mean over objects of the object's mean over views of
:func:`ouroboros3d.evaluation.metrics.psnr` in its validation arithmetic (the MSE floored at
:data:`MIN_MSE`, the prediction clamped to [0, 1]): within rounding of the evaluation's PSNR,
but not its bits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..data.dataset import collate
from ..evaluation.metrics import psnr
from ..model import Ouroboros3D
from ..sampling import sample

__all__ = ["reconstruction_scores", "stack_items", "validation_scores"]

# what the scores read of a dataset item
VALIDATION_KEYS = ("views", "input_view", "K", "c2w")
# the floor of a view's mean squared error: a perfect view scores 100 dB, not inf
MIN_MSE = 1e-10


def stack_items(items: Sequence[Mapping]) -> dict[str, torch.Tensor]:
    """The validation batch of dataset items (their :data:`VALIDATION_KEYS`)."""
    return collate(items, VALIDATION_KEYS)


def _mean_psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """The mean over objects of each object's mean over views of per-image PSNR; (B, V, 3, H, W) in [0, 1]."""
    return psnr(pred, target, min_mse=MIN_MSE).mean(1).mean().item()


@torch.no_grad()
def validation_scores(
    model: Ouroboros3D, batch: Mapping[str, torch.Tensor], seeds: Sequence[int], sample_kwargs: Mapping
) -> dict[str, float]:
    """Mean scores over the objects of ``batch`` (see the module docstring); the model is left as it was.

    ``sample_kwargs`` are :func:`~ouroboros3d.sampling.sample_kwargs` of the params (the sampler
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
        "x0_psnr": _mean_psnr(x0[:, 1:], target),
        "mv_psnr": _mean_psnr(views[:, 1:], target),
    } | _baselines(batch)


def _baselines(batch: Mapping[str, torch.Tensor]) -> dict[str, float]:
    target = batch["views"][:, 1:]
    return {
        "copy_input_psnr": _mean_psnr(batch["input_view"][:, None].expand_as(target), target),
        "white_psnr": _mean_psnr(torch.ones_like(target), target),
    }


@torch.no_grad()
def reconstruction_scores(model: Ouroboros3D, batch: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """G on the ground-truth views of ``batch``: PSNR of its renders at the non-input views."""
    was_training = model.training
    model.eval()
    recon = model.reconstruct(batch["views"], batch["K"], batch["c2w"], None)
    model.train(was_training)
    return {"recon_psnr": _mean_psnr(recon.rgb[:, 1:], batch["views"][:, 1:])} | _baselines(batch)
