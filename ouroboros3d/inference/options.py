"""A generation's options, checked in one place (:func:`check_options`), and what their defaults and the
cameras follow from (the model's params).

:meth:`Ouroboros3DPipeline.__call__ <ouroboros3d.inference.pipeline.Ouroboros3DPipeline.__call__>` checks
its options with it, and the ``ouroboros3d`` command before any work (with ``flags=True`` the messages
name the command's options: ``--steps``).
"""

from __future__ import annotations

import operator

import torch

from ..config import Params
from ..errors import GenerationError
from ..geometry.cameras import object_cameras

__all__ = [
    "MAX_MESH_RESOLUTION",
    "MAX_SEED",
    "MAX_STEPS",
    "MIN_MESH_RESOLUTION",
    "check_mesh_resolution",
    "check_options",
    "check_seed",
    "default_elevation",
    "view_cameras",
]

# Seeds seed torch.Generator, which takes 64 bits; negative ones it would wrap onto large ones.
MAX_SEED = 2**64 - 1
# More denoising steps than this change nothing the eye or the metrics see (the paper uses 25; EDM
# samplers converge well before 1000) and a mistyped count would run for days.
MAX_STEPS = 1000
# The mesh's TSDF fusion holds about 100 bytes per voxel of its resolution³ grid (voxel centres,
# sums, weights and each camera's projections): 512³ needs ~13 GB and minutes; 96 is the default.
MIN_MESH_RESOLUTION, MAX_MESH_RESOLUTION = 4, 512


def _name(option: str, flags: bool) -> str:
    """How a message names an option: ``mesh_resolution`` (Python) or ``--mesh-resolution`` (the command)."""
    return "--" + option.replace("_", "-") if flags else option


def _whole_number(value, option: str, flags: bool) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise GenerationError(f"{_name(option, flags)} must be a whole number, got {value!r}") from None


def check_seed(seed, flags: bool = False) -> int:
    """``seed`` as an int, or a GenerationError unless it is a whole number in [0, MAX_SEED]."""
    value = _whole_number(seed, "seed", flags)
    if not 0 <= value <= MAX_SEED:
        raise GenerationError(f"{_name('seed', flags)} must lie in [0, 2^64 - 1], got {value}")
    return value


def check_mesh_resolution(resolution, flags: bool = False) -> int:
    """``resolution`` as an int, or a GenerationError outside [MIN_MESH_RESOLUTION, MAX_MESH_RESOLUTION]."""
    value = _whole_number(resolution, "mesh_resolution", flags)
    if not MIN_MESH_RESOLUTION <= value <= MAX_MESH_RESOLUTION:
        raise GenerationError(
            f"{_name('mesh_resolution', flags)} must lie in [{MIN_MESH_RESOLUTION}, {MAX_MESH_RESOLUTION}] voxels "
            f"per side (its grid holds resolution³ voxels, ~13 GB at {MAX_MESH_RESOLUTION}), got {value}"
        )
    return value


def check_options(
    *,
    steps: int | None = None,
    elevation: float | None = None,
    seed: int = 0,
    strip_steps: int = 0,
    mesh_resolution: int = 96,
    flags: bool = False,
) -> None:
    """GenerationError naming the first option out of its range (None: the model's default, always valid).

    ``steps`` in [1, MAX_STEPS], ``elevation`` in (-89, 89) degrees, ``seed`` in [0, MAX_SEED],
    ``strip_steps`` >= 0 and ``mesh_resolution`` in [MIN_MESH_RESOLUTION, MAX_MESH_RESOLUTION] (used
    only with ``mesh=True``, checked always). ``flags``: name the options as the command does (``--steps``).
    """
    if steps is not None and not 1 <= steps:
        raise GenerationError(f"{_name('steps', flags)} must be >= 1, got {steps}")
    if steps is not None and steps > MAX_STEPS:
        raise GenerationError(f"{_name('steps', flags)} must be <= {MAX_STEPS}, got {steps}")
    if elevation is not None and not -89.0 < elevation < 89.0:
        raise GenerationError(f"{_name('elevation', flags)} must lie in (-89, 89) degrees, got {elevation}")
    check_mesh_resolution(mesh_resolution, flags)
    if strip_steps < 0:
        raise GenerationError(f"{_name('strip_steps', flags)} must be >= 0, got {strip_steps}")
    check_seed(seed, flags)


def default_elevation(params: Params) -> float:
    """The elevation used when none is given: the middle of the evaluation split's range.

    It lies inside the training range (``data.train.elevation_deg``) and matches a photo
    taken from slightly above, the common case; 10° for the cpu-small profile.
    """
    lo, hi = params.data.eval.elevation_deg
    return (lo + hi) / 2.0


def view_cameras(params: Params, elevation_deg: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Azimuths (V,), intrinsics K (V, 3, 3) and c2w (V, 4, 4) of the params' view layout at one elevation.

    The same cameras the dataset renders with (no azimuth offset): view 0 looks along -X.
    """
    K, c2w, azimuths = object_cameras(params.render_settings, elevation_deg, 0.0)
    return azimuths, K, c2w
