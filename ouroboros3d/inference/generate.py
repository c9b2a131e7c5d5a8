"""Image-to-3D for a user's own picture: load a checkpoint, prepare the image, run Algorithm 2, write files.

The Python API (usable from notebooks)::

    from ouroboros3d.inference.generate import generate, write_outputs

    result = generate("mug.png", checkpoint="models/main", steps=25, seed=0)
    result.views        # (V, 3, H, W) in [0, 1], view 0 is the input view
    result.gaussians    # ouroboros3d.gaussians.container.Gaussians with B = 1
    write_outputs(result, "outputs/mug")

    result = generate("mug.png", mesh=True)   # also meshes the Gaussians (ouroboros3d.gaussians.meshing)
    result.mesh         # trimesh.Trimesh with vertex colours; write_outputs adds mesh.glb, mesh.obj

``ouroboros3d generate IMAGE`` (:mod:`ouroboros3d.inference.cli`) is a thin wrapper around these two.

The parts live in small modules: :mod:`ouroboros3d.inference.model_folder` (loading a trained model, an
:class:`~ouroboros3d.inference.pipeline.Ouroboros3DPipeline`),
:mod:`ouroboros3d.inference.images` (the picture to the model's input view), this module (Algorithm 2
on it) and :mod:`ouroboros3d.inference.exports` (the files). Their public names are re-exported here.

Every user-facing failure (not an image, nothing but background, a missing or mismatching
checkpoint, an unavailable device) raises :class:`GenerationError` with a one-line message.
"""

from __future__ import annotations

import operator
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from ..config import Params
from ..errors import GenerationError
from ..gaussians.container import Gaussians
from ..geometry.cameras import RenderSettings, object_cameras
from ..model import Reconstruction, StepRecord, sample, sample_kwargs
from .exports import write_outputs
from .images import PreparedImage, prepare_image, target_fill
from .model_folder import DEFAULT_CHECKPOINT, load_checkpoint, read_checkpoint_params

if TYPE_CHECKING:
    from .pipeline import Ouroboros3DPipeline

__all__ = [
    "DEFAULT_CHECKPOINT",
    "MAX_MESH_RESOLUTION",
    "MAX_SEED",
    "MAX_STEPS",
    "MIN_MESH_RESOLUTION",
    "GenerationError",
    "GenerationResult",
    "PreparedImage",
    "check_mesh_resolution",
    "check_seed",
    "default_elevation",
    "generate",
    "load_checkpoint",
    "prepare_image",
    "read_checkpoint_params",
    "surface_mesh",
    "target_fill",
    "view_cameras",
    "write_outputs",
]


# Seeds seed torch.Generator, which takes 64 bits; negative ones it would wrap onto large ones.
MAX_SEED = 2**64 - 1
# More denoising steps than this change nothing the eye or the metrics see (the paper uses 25; EDM
# samplers converge well before 1000) and a mistyped count would run for days.
MAX_STEPS = 1000
# The mesh's TSDF fusion holds about 100 bytes per voxel of its resolution³ grid (voxel centres,
# sums, weights and each camera's projections): 512³ needs ~13 GB and minutes; 96 is the default.
MIN_MESH_RESOLUTION, MAX_MESH_RESOLUTION = 4, 512


def check_seed(seed) -> int:
    """``seed`` as an int, or a GenerationError unless it is a whole number in [0, MAX_SEED]."""
    try:
        value = operator.index(seed)
    except TypeError:
        raise GenerationError(f"seed must be a whole number, got {seed!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise GenerationError(f"seed must lie in [0, 2^64 - 1], got {value}")
    return value


def check_mesh_resolution(resolution) -> int:
    """``resolution`` as an int, or a GenerationError outside [MIN_MESH_RESOLUTION, MAX_MESH_RESOLUTION]."""
    try:
        value = operator.index(resolution)
    except TypeError:
        raise GenerationError(f"mesh_resolution must be a whole number, got {resolution!r}") from None
    if not MIN_MESH_RESOLUTION <= value <= MAX_MESH_RESOLUTION:
        raise GenerationError(
            f"mesh_resolution must lie in [{MIN_MESH_RESOLUTION}, {MAX_MESH_RESOLUTION}] voxels per side, got {value}"
        )
    return value


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
    K, c2w, azimuths = object_cameras(RenderSettings.from_params(params), elevation_deg, 0.0)
    return azimuths, K, c2w


# --- generation ------------------------------------------------------------------------


@dataclass
class GenerationResult:
    """What :func:`generate` produced; tensors are on the CPU."""

    input: PreparedImage
    views: torch.Tensor  # (V, 3, H, W) in [0, 1], view 0 is the input view
    gaussians: Gaussians  # B = 1
    recon_rgb: torch.Tensor  # (V, 3, H, W): the final Gaussians rendered at the views' cameras
    steps: list[StepRecord]  # the kept denoising steps (B = 1), for the step strip
    azimuths: torch.Tensor  # (V,) degrees
    K: torch.Tensor  # (V, 3, 3)
    c2w: torch.Tensor  # (V, 4, 4)
    params: Params
    settings: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    notes: list[str] = field(default_factory=list)
    mesh: Any = None  # trimesh.Trimesh with vertex colours when generate(mesh=True), else None


def _strip_indices(steps: int, count: int) -> list[int]:
    if count <= 0:
        return []
    return sorted({round(x) for x in np.linspace(0, steps - 1, min(count, steps))})


def _to_cpu_record(record: StepRecord) -> StepRecord:
    r = record.recon
    recon = Reconstruction(r.gaussians.detach().to("cpu"), r.rgb.cpu(), r.alpha.cpu(), r.ccm.cpu())
    return StepRecord(record.i, record.sigma, record.views.cpu(), recon, record.fed_back)


def generate(
    image: str | Path | Image.Image | np.ndarray,
    checkpoint: str | Path | Ouroboros3DPipeline = DEFAULT_CHECKPOINT,
    *,
    steps: int | None = None,
    elevation: float | None = None,
    seed: int = 0,
    feedback: bool = True,
    device: str = "cpu",
    strip_steps: int = 5,
    progress: bool | Callable[[dict], None] = False,
    mesh: bool = False,
    mesh_resolution: int = 96,
) -> GenerationResult:
    """Generate the V views and the 3D Gaussians of the object in ``image`` (Algorithm 2).

    Args:
        image: a path, PIL image or (H, W, 3|4) array; see :func:`prepare_image`.
        checkpoint: a model folder (what the train stage writes: see :mod:`ouroboros3d.inference.pipeline`)
            or an :class:`~ouroboros3d.inference.pipeline.Ouroboros3DPipeline` already loaded (to generate
            many images without reloading).
        steps: denoising steps (default: the checkpoint's ``sample.steps``, 25 as the paper; at most MAX_STEPS).
        elevation: camera elevation in degrees (default :func:`default_elevation`).
        seed: the initial noise's seed, in [0, 2^64 - 1]; the same seed gives the same views.
        feedback: False zeroes the 3D feedback maps at every step (``feedback_start = 1``),
            for comparison; G still reconstructs at every step.
        device: "cpu" or "cuda" (ignored when a loaded pipeline is given).
        strip_steps: how many evenly spaced steps to keep in ``result.steps``.
        progress: True shows a tqdm bar over the steps; a callable gets ``sample``'s
            per-step info dicts instead.
        mesh: also mesh the final Gaussians into ``result.mesh``
            (:func:`ouroboros3d.gaussians.meshing.gaussians_to_mesh`, seen by cameras at the
            checkpoint's radius and field of view); raises :class:`ouroboros3d.gaussians.meshing.MeshError`
            when they render no surface.
        mesh_resolution: voxels per side of the mesh's fusion grid, in [4, MAX_MESH_RESOLUTION].

    Raises GenerationError for a bad option, image or checkpoint (before the model loads), and
    when sampling produces NaN or infinite values.
    """
    timings: dict[str, float] = {}
    # the options and the image are checked before the (slower) model build, so a bad input fails at once
    check_seed(seed)
    if mesh:
        check_mesh_resolution(mesh_resolution)
    loaded = not isinstance(checkpoint, (str, os.PathLike))
    params = checkpoint.params if loaded else read_checkpoint_params(checkpoint)[1]
    steps = params.sample.steps if steps is None else int(steps)
    if not 1 <= steps <= MAX_STEPS:
        raise GenerationError(f"steps must lie in [1, {MAX_STEPS}], got {steps}")
    elevation = default_elevation(params) if elevation is None else float(elevation)
    if not -89.0 < elevation < 89.0:
        raise GenerationError(f"elevation must lie in (-89, 89) degrees, got {elevation}")
    t0 = time.perf_counter()
    prepared = prepare_image(image, params.data.resolution, target_fill(params))
    timings["prepare_image"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ckpt = checkpoint if loaded else load_checkpoint(checkpoint, device)
    timings["load_checkpoint"] = time.perf_counter() - t0
    model = ckpt.model
    notes = []
    lo, hi = params.data.train.elevation_deg
    if not lo <= elevation <= hi:
        notes.append(f"elevation {elevation:g} is outside the training range [{lo:g}, {hi:g}]")
    if not feedback and not model.has_feedback:
        notes.append("this checkpoint has no feedback networks: --no-feedback changes nothing")

    azimuths, K, c2w = view_cameras(params, elevation)

    keep = set(_strip_indices(steps, strip_steps))
    kept: list[StepRecord] = []
    bar = None
    if progress is True:
        from ..progress import bar as progress_bar

        bar = progress_bar(total=steps, desc="denoising", unit="step", leave=False)

    def on_step(info: dict) -> None:
        if info["i"] in keep and info["record"] is not None:
            kept.append(_to_cpu_record(info["record"]))
        if bar is not None:
            bar.update(1)
        elif callable(progress):
            progress(info)

    dev = str(ckpt.device)
    feedback_start = params.sample.feedback_start if feedback else 1.0
    t0 = time.perf_counter()
    try:
        out = sample(
            model,
            prepared.tensor[None].to(dev),
            K[None].to(dev),
            c2w[None].to(dev),
            **sample_kwargs(params.sample, steps=steps, feedback_start=feedback_start),
            seeds=[int(seed)],
            on_step=on_step,
        )
    finally:
        if bar is not None:
            bar.close()
    if dev.startswith("cuda"):
        torch.cuda.synchronize()
    timings["sample"] = time.perf_counter() - t0
    _check_finite_result(out, ckpt.name_or_path)
    surface = None
    if mesh:
        t0 = time.perf_counter()
        surface = surface_mesh(out.gaussians, params, mesh_resolution)
        timings["mesh"] = time.perf_counter() - t0

    settings = {
        "image": prepared.source,
        "checkpoint": ckpt.name_or_path,
        "preset": params.preset,
        "device": dev,
        "seed": int(seed),
        "steps": steps,
        "elevation_deg": elevation,
        "radius": params.camera.radius,
        "fov_deg": params.camera.fov_deg,
        "azimuths_deg": [float(a) for a in azimuths],
        "resolution": params.data.resolution,
        "feedback": bool(feedback),
        "feedback_start": feedback_start,
        "model_feedback_maps": list(model.feedback_maps),
        "guidance": list(params.sample.guidance),
        "sampler": params.sample.sampler,
        "input": {
            "original_size": list(prepared.original_size),
            "mask_from": prepared.mask_from,
            "bbox": list(prepared.bbox),
            "fill": prepared.fill,
        },
        "num_gaussians": int(out.gaussians.num_gaussians),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    return GenerationResult(
        input=prepared,
        views=out.views[0].cpu(),
        gaussians=out.gaussians.detach().to("cpu"),
        recon_rgb=out.recon.rgb[0].cpu(),
        steps=sorted(kept, key=lambda r: r.i),
        azimuths=azimuths,
        K=K,
        c2w=c2w,
        params=params,
        settings=settings,
        timings=timings,
        notes=notes,
        mesh=surface,
    )


def _check_finite_result(out, checkpoint: str) -> None:
    """GenerationError when sampling produced NaN or inf: written out, they would be black views and
    a .ply without vertices, with nothing said (the weights are checked when they load; this catches
    the rest: an overflow, a broken device)."""
    g = out.gaussians
    parts = {"views": out.views, "Gaussian means": g.means, "Gaussian scales": g.scales}
    parts |= {"Gaussian opacities": g.opacities, "Gaussian colours": g.colors, "Gaussian rotations": g.quats}
    bad = [name for name, t in parts.items() if not bool(torch.isfinite(t).all())]
    if bad:
        raise GenerationError(
            f"sampling with {checkpoint} produced NaN or infinite values ({', '.join(bad)}); nothing was written"
        )


def surface_mesh(gaussians: Gaussians, params: Params, resolution: int = 96):
    """The Gaussians' surface (``generate(mesh=True)``'s), meshed on the device they were sampled on,
    by cameras at the checkpoint's radius and field of view; raises MeshError where there is none."""
    from ..gaussians.meshing import gaussians_to_mesh

    camera = params.camera
    return gaussians_to_mesh(gaussians, resolution=resolution, radius=camera.radius, fov_deg=camera.fov_deg)
