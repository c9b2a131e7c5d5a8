"""Image-to-3D for a user's own picture: load a checkpoint, prepare the image, run Algorithm 2, write files.

The Python API (usable from notebooks)::

    from ouroboros3d.generate import generate, write_outputs

    result = generate("mug.png", checkpoint="models/main", steps=25, seed=0)
    result.views        # (V, 3, H, W) in [0, 1], view 0 is the input view
    result.gaussians    # ouroboros3d.gaussians.Gaussians with B = 1
    write_outputs(result, "outputs/mug")

    result = generate("mug.png", mesh=True)   # also meshes the Gaussians (ouroboros3d.meshing)
    result.mesh         # trimesh.Trimesh with vertex colours; write_outputs adds mesh.glb, mesh.obj

``ouroboros3d generate IMAGE`` (:mod:`ouroboros3d.cli`) is a thin wrapper around these two.

Input images are prepared the way the training renders look (:func:`prepare_image`): an
RGBA image's alpha is the object mask and it is composited on white; an RGB image is assumed
to show the object on a plain, near-white background, which is what the mask is taken from.
The object is cropped to its mask's bounding box, centred, and rescaled so that the box's
longer side fills :func:`target_fill` of the frame, the fraction a unit-box object's longest
side fills in the training renders, then resized to the model's resolution.

Every user-facing failure (not an image, nothing but background, a missing or mismatching
checkpoint, an unavailable device) raises :class:`GenerationError` with a one-line message.
"""

from __future__ import annotations

import io
import json
import math
import platform
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageOps, UnidentifiedImageError

from . import cameras
from .config import Params, ParamsError, params_from_resolved
from .errors import UserError
from .gaussians import Gaussians, save_ply
from .io import atomic_write_bytes, atomic_write_text, load_weights
from .model import Ouroboros3D, Reconstruction, StepRecord, sample, sample_kwargs
from .splatting import render

__all__ = [
    "DEFAULT_CHECKPOINT",
    "Checkpoint",
    "GenerationError",
    "GenerationResult",
    "PreparedImage",
    "default_elevation",
    "generate",
    "load_checkpoint",
    "prepare_image",
    "read_checkpoint_params",
    "target_fill",
    "view_cameras",
    "write_outputs",
]

DEFAULT_CHECKPOINT = "models/main"
# Below these sizes an input is accepted with a warning: the object's box (its longer side) or the
# whole picture has too few pixels to show any detail, however large it is scaled at the model.
MIN_OBJECT_SIDE = 8
MIN_IMAGE_SIDE = 16
WEIGHTS_FILE = "model.safetensors"
PARAMS_FILE = "params.json"
# An RGB pixel whose darkest channel is this far below white is object; the ramp between the
# two thresholds gives a soft edge (JPEG noise on a white background stays under the first).
WHITE_SOFT = (0.04, 0.10)


class GenerationError(UserError, RuntimeError):
    """A user-facing failure of image-to-3D generation; its message is one line."""


# --- checkpoint ------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """A model built from a checkpoint's params.json with its weights loaded, in eval mode."""

    model: Ouroboros3D
    params: Params
    weights_path: Path
    device: str


def _resolve_checkpoint(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    if path.suffix == ".safetensors":
        weights, params_file = path, path.parent / PARAMS_FILE
    else:
        weights, params_file = path / WEIGHTS_FILE, path / PARAMS_FILE
    hint = "train one with `dvc repro`, or pass --checkpoint: a folder with model.safetensors and params.json"
    if not weights.is_file():
        raise GenerationError(f"checkpoint not found: {weights} ({hint})")
    if not params_file.is_file():
        raise GenerationError(f"checkpoint {weights} has no {PARAMS_FILE} beside it ({hint})")
    return weights, params_file


def _check_device(device: str) -> str:
    device = str(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise GenerationError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    try:
        torch.device(device)
    except (RuntimeError, ValueError):
        raise GenerationError(f"unknown device {device!r}; use cpu or cuda") from None
    return device


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def read_checkpoint_params(checkpoint: str | Path = DEFAULT_CHECKPOINT) -> tuple[Path, Params]:
    """The weights file of a checkpoint and the :class:`Params` rebuilt from the params.json beside it."""
    weights, params_file = _resolve_checkpoint(checkpoint)
    try:
        return weights, params_from_resolved(json.loads(params_file.read_text()))
    except json.JSONDecodeError as e:
        raise GenerationError(f"{params_file} is not valid JSON: {_one_line(e)}") from None
    except ParamsError as e:
        raise GenerationError(f"{params_file}: {_one_line(e)}") from None


def load_checkpoint(checkpoint: str | Path = DEFAULT_CHECKPOINT, device: str = "cpu") -> Checkpoint:
    """Build the model a checkpoint's params.json describes and load its weights.

    ``checkpoint`` is a folder holding ``model.safetensors`` and ``params.json`` (what the
    train stage writes to ``models/<variant>/``) or the ``.safetensors`` file itself.
    """
    from .build import build_model

    device = _check_device(device)
    weights, params = read_checkpoint_params(checkpoint)
    params_file = weights.parent / PARAMS_FILE
    try:
        model = build_model(params)
    except Exception as e:  # a missing VAE/SVD folder, an unknown preset...
        raise GenerationError(f"cannot build the model of {params_file}: {_one_line(e)}") from None
    try:
        load_weights(model, weights)
    except ValueError as e:
        raise GenerationError(_one_line(e)) from None
    except Exception as e:  # a truncated or foreign file
        raise GenerationError(f"cannot read weights {weights}: {_one_line(e)}") from None
    return Checkpoint(model.to(device).eval(), params, weights, device)


# --- the input image -------------------------------------------------------------------


def target_fill(params: Params) -> float:
    """The fraction of the frame that an object's longer image-plane side fills in the training renders.

    Objects are normalised so their longest side is 1 (the unit box [-0.5, 0.5]^3) and seen
    from ``camera.radius`` with ``camera.fov_deg`` across the width: a segment of length 1
    through the orbit centre, across the view, spans ``f / radius`` pixels of a frame
    ``2 f tan(fov / 2)`` wide. For the default camera (radius 2.2, 39.6°) that is 0.631; the
    median over the rendered training objects' masks is 0.63.
    """
    return 1.0 / (2.0 * params.camera.radius * math.tan(math.radians(params.camera.fov_deg) / 2.0))


@dataclass
class PreparedImage:
    """The input view as the model sees it, and how it was obtained."""

    tensor: torch.Tensor  # (3, R, R) in [0, 1], the object centred on white
    source: str  # a description of the input (its path, or "array")
    original_size: tuple[int, int]  # (width, height)
    mask_from: str  # "alpha" or "white background"
    bbox: tuple[int, int, int, int]  # the object's box in the original image: left, top, right, bottom
    fill: float  # the fraction of the frame the box's longer side fills


def _open_image(image: str | Path | Image.Image | np.ndarray) -> tuple[Image.Image, str]:
    if isinstance(image, Image.Image):
        return image, "PIL image"
    if isinstance(image, np.ndarray):
        arr = image
        if arr.dtype != np.uint8:
            arr = (np.clip(arr.astype(np.float64), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
            raise GenerationError(f"an image array must be (H, W, 3) or (H, W, 4), got {tuple(image.shape)}")
        return Image.fromarray(arr), "array"
    path = Path(image)
    if not path.is_file():
        raise GenerationError(f"image not found: {path}")
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise GenerationError(f"{path} is not a readable image (PNG or JPEG expected): {_one_line(e)}") from None
    except Image.DecompressionBombError as e:
        raise GenerationError(f"{path}: {_one_line(e)}") from None
    return _to_8bit(ImageOps.exif_transpose(img)), str(path)


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit greyscale images (modes I;16, I) scaled to 8 bits; Pillow's own
    conversion to RGB would clip them at 255 (a mid-grey 16-bit object became white)."""
    if img.mode not in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return img
    arr = np.asarray(img, dtype=np.float64)
    top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
    if img.mode == "F":
        top = 1.0 if arr.max() <= 1.0 else 255.0
    return Image.fromarray((np.clip(arr / top, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), "L")


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info)


def _mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Bounding box (left, top, right, bottom) of a boolean mask, ignoring specks of 1-2 pixels."""
    if not mask.any():
        return None
    # a morphological opening drops isolated pixels (JPEG noise, dust) from the box
    opened = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MinFilter(3))
    opened = np.asarray(opened.filter(ImageFilter.MaxFilter(3))) > 127
    use = opened if opened.any() else mask
    rows, cols = np.flatnonzero(use.any(axis=1)), np.flatnonzero(use.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _warn_if_tiny(source: str, size: tuple[int, int], bbox: tuple[int, int, int, int]) -> None:
    """Warn when the object's box or the picture is too small to carry detail (see MIN_OBJECT_SIDE)."""
    w, h = bbox[2] - bbox[0], bbox[3] - bbox[1]
    if max(w, h) < MIN_OBJECT_SIDE or min(size) < MIN_IMAGE_SIDE:
        warnings.warn(
            f"the object in {source} covers only {w}x{h} pixels of the {size[0]}x{size[1]} image: "
            "it carries almost no detail",
            stacklevel=3,  # the caller of prepare_image
        )


def prepare_image(image: str | Path | Image.Image | np.ndarray, resolution: int, fill: float) -> PreparedImage:
    """The model's input view from a picture of any size (see the module docstring).

    ``image`` is a path (PNG, JPEG or anything Pillow reads), a PIL image or an (H, W, 3|4)
    array (uint8, or floats in [0, 1]). ``fill`` is the fraction of the frame the object's
    longer side is scaled to (:func:`target_fill`).
    """
    if not 0 < fill <= 1:
        raise GenerationError(f"fill must lie in (0, 1], got {fill}")
    img, source = _open_image(image)
    if _has_alpha(img):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float64) / 255.0
        rgb, alpha = rgba[..., :3], rgba[..., 3]
        mask_from = "alpha"
        empty = "its alpha channel is fully transparent"
    else:
        rgb = np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0
        lo, hi = WHITE_SOFT
        alpha = np.clip((1.0 - rgb.min(axis=-1) - lo) / (hi - lo), 0.0, 1.0)
        mask_from = "white background"
        empty = "it is plain white (an RGB image must show the object on a near-white background)"
    bbox = _mask_bbox(alpha > 0.5)
    if bbox is None:
        raise GenerationError(f"no object found in {source}: {empty}")
    _warn_if_tiny(source, img.size, bbox)
    composite = rgb * alpha[..., None] + (1.0 - alpha[..., None])  # on white, like the training renders
    left, top, right, bottom = bbox
    crop = composite[top:bottom, left:right]
    h, w = crop.shape[:2]
    side = max(math.ceil(max(h, w) / fill), h, w)
    canvas = np.ones((side, side, 3))
    y0, x0 = (side - h) // 2, (side - w) // 2
    canvas[y0 : y0 + h, x0 : x0 + w] = crop
    square = Image.fromarray((canvas * 255.0 + 0.5).astype(np.uint8))
    resized = square.resize((resolution, resolution), Image.Resampling.LANCZOS)
    tensor = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
    return PreparedImage(tensor, source, img.size, mask_from, bbox, max(h, w) / side)


# --- cameras ---------------------------------------------------------------------------


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
    from .cameras import RenderSettings, object_cameras

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
    checkpoint: str | Path | Checkpoint = DEFAULT_CHECKPOINT,
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
        checkpoint: a folder with model.safetensors + params.json, the .safetensors file, or a
            :class:`Checkpoint` already loaded (to generate many images without reloading).
        steps: denoising steps (default: the checkpoint's ``sample.steps``, 25 as the paper).
        elevation: camera elevation in degrees (default :func:`default_elevation`).
        seed: the initial noise's seed; the same seed gives the same views.
        feedback: False zeroes the 3D feedback maps at every step (``feedback_start = 1``),
            for comparison; G still reconstructs at every step.
        device: "cpu" or "cuda" (ignored when a loaded :class:`Checkpoint` is given).
        strip_steps: how many evenly spaced steps to keep in ``result.steps``.
        progress: True shows a tqdm bar over the steps; a callable gets ``sample``'s
            per-step info dicts instead.
        mesh: also mesh the final Gaussians into ``result.mesh``
            (:func:`ouroboros3d.meshing.gaussians_to_mesh`, seen by cameras at the
            checkpoint's radius and field of view); raises :class:`ouroboros3d.meshing.MeshError`
            when they render no surface.
        mesh_resolution: voxels per side of the mesh's fusion grid.
    """
    timings: dict[str, float] = {}
    # the image is checked before the (slower) model build, so a bad input fails at once
    params = checkpoint.params if isinstance(checkpoint, Checkpoint) else read_checkpoint_params(checkpoint)[1]
    t0 = time.perf_counter()
    prepared = prepare_image(image, params.data.resolution, target_fill(params))
    timings["prepare_image"] = time.perf_counter() - t0

    steps = params.sample.steps if steps is None else int(steps)
    if steps < 1:
        raise GenerationError(f"steps must be >= 1, got {steps}")
    elevation = default_elevation(params) if elevation is None else float(elevation)
    if not -89.0 < elevation < 89.0:
        raise GenerationError(f"elevation must lie in (-89, 89) degrees, got {elevation}")
    if mesh and mesh_resolution < 4:
        raise GenerationError(f"mesh_resolution must be >= 4, got {mesh_resolution}")

    t0 = time.perf_counter()
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint, device)
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
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="denoising", unit="step", leave=False)

    def on_step(info: dict) -> None:
        if info["i"] in keep and info["record"] is not None:
            kept.append(_to_cpu_record(info["record"]))
        if bar is not None:
            bar.update(1)
        elif callable(progress):
            progress(info)

    dev = ckpt.device
    feedback_start = params.sample.feedback_start if feedback else 1.0
    generator = torch.Generator().manual_seed(int(seed))
    t0 = time.perf_counter()
    try:
        out = sample(
            model,
            prepared.tensor[None].to(dev),
            K[None].to(dev),
            c2w[None].to(dev),
            **sample_kwargs(params.sample, steps=steps, feedback_start=feedback_start),
            generator=generator,
            on_step=on_step,
        )
    finally:
        if bar is not None:
            bar.close()
    if dev.startswith("cuda"):
        torch.cuda.synchronize()
    timings["sample"] = time.perf_counter() - t0
    surface = None
    if mesh:
        t0 = time.perf_counter()
        surface = _mesh(out.gaussians, params, mesh_resolution)
        timings["mesh"] = time.perf_counter() - t0

    settings = {
        "image": prepared.source,
        "checkpoint": str(ckpt.weights_path),
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


def _mesh(gaussians: Gaussians, params: Params, resolution: int):
    """The Gaussians' surface, meshed on the device they were sampled on, by cameras at the training radius and fov."""
    from .meshing import gaussians_to_mesh

    camera = params.camera
    return gaussians_to_mesh(gaussians, resolution=resolution, radius=camera.radius, fov_deg=camera.fov_deg)


# --- outputs ---------------------------------------------------------------------------


def _to_pil(image: torch.Tensor) -> Image.Image:
    arr = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(arr)


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _tile(image: torch.Tensor, size: int) -> Image.Image:
    img = _to_pil(image)
    return img if img.size == (size, size) else img.resize((size, size), Image.Resampling.NEAREST)


def _montage(rows: list[list[Image.Image | None]], tile: int, gap: int = 4, labels: list[str] | None = None):
    label_w = 0 if not labels else 8 + 6 * max(len(s) for s in labels)
    cols = max(len(r) for r in rows)
    width = label_w + cols * tile + (cols - 1) * gap
    height = len(rows) * tile + (len(rows) - 1) * gap
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        y = r * (tile + gap)
        if labels:
            draw.text((4, y + tile // 2 - 5), labels[r], fill=(0, 0, 0))
        for c, img in enumerate(row):
            if img is not None:
                canvas.paste(img, (label_w + c * (tile + gap), y))
    return canvas


def grid_image(result: GenerationResult, tile: int | None = None) -> Image.Image:
    """Row 1: the prepared input, then the V generated views; row 2: the final Gaussians rendered at the views."""
    tile = tile or max(result.views.shape[-1], 128)
    top = [_tile(result.input.tensor, tile)] + [_tile(v, tile) for v in result.views]
    bottom = [None] + [_tile(v, tile) for v in result.recon_rgb]
    return _montage([top, bottom], tile)


def step_strip_image(result: GenerationResult, tile: int | None = None) -> Image.Image:
    """One row per kept denoising step: the x0 prediction of every view, then its 3D reconstruction's renders."""
    tile = tile or max(result.views.shape[-1], 64)
    v = result.views.shape[0]
    rows, labels = [], []
    total = result.settings["steps"]
    for rec in result.steps:
        rows.append([_tile(x, tile) for x in rec.views[0]] + [None] + [_tile(x, tile) for x in rec.recon.rgb[0]])
        labels.append(f"step {rec.i + 1}/{total} sigma={rec.sigma:.3g}")
    if not rows:
        return Image.new("RGB", (tile, tile), (255, 255, 255))
    strip = _montage(rows, tile, labels=labels)
    label_w = strip.width - (2 * v + 1) * tile - 2 * v * 4
    header = Image.new("RGB", (strip.width, 14), (255, 255, 255))
    draw = ImageDraw.Draw(header)
    draw.text((label_w, 1), "x0 prediction (all views)", fill=(0, 0, 0))
    draw.text((label_w + (v + 1) * (tile + 4), 1), "3D reconstruction, rendered", fill=(0, 0, 0))
    out = Image.new("RGB", (strip.width, strip.height + header.height), (255, 255, 255))
    out.paste(header, (0, 0))
    out.paste(strip, (0, header.height))
    return out


def turntable_frames(
    result: GenerationResult, frames: int = 36, size: int | None = None, chunk: int = 12
) -> list[Image.Image]:
    """The Gaussians rendered on a 360° orbit at the generation's elevation, starting at the input view.

    A thin bar along the bottom edge shows the azimuth (it also keeps every frame distinct,
    so a GIF writer never merges two).
    """
    params = result.params
    size = size or max(params.data.resolution, 128)
    elevation = result.settings["elevation_deg"]
    az = torch.arange(frames, dtype=torch.float32) * (360.0 / frames)
    c2w = cameras.orbit_c2w(az, elevation, params.camera.radius)
    K = cameras.intrinsics(params.camera.fov_deg, size).expand(frames, 3, 3).contiguous()
    device = result.settings["device"]
    gaussians = result.gaussians.to(device)
    images = []
    with torch.no_grad():
        for s in range(0, frames, chunk):
            out = render(gaussians, K[s : s + chunk].to(device), c2w[s : s + chunk].to(device), size, size)
            images.extend(_to_pil(x) for x in out.rgb[0].cpu())
    bar_h = max(1, size // 64)
    for i, img in enumerate(images):
        ImageDraw.Draw(img).rectangle([0, size - bar_h, round(size * (i + 1) / frames) - 1, size - 1], fill=(96,) * 3)
    return images


def _gif_bytes(frames: list[Image.Image], fps: float) -> bytes:
    buf = io.BytesIO()
    frames[0].save(
        buf, format="GIF", save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0, optimize=False
    )
    return buf.getvalue()


def _write_mp4(frames: list[Image.Image], path: Path, fps: float) -> str | None:
    """Encode ``frames`` with an ``ffmpeg`` binary from PATH; returns a note when skipped or failed."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        return "turntable.mp4 skipped: no ffmpeg on PATH (the GIF has the same frames)"
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".mp4-") as tmp:
        for i, img in enumerate(frames):
            img.save(Path(tmp) / f"frame_{i:04d}.png")
        out = Path(tmp) / "turntable.mp4"
        cmd = [ffmpeg, "-y", "-loglevel", "error", "-framerate", f"{fps:g}", "-i", str(Path(tmp) / "frame_%04d.png")]
        cmd += ["-vf", "scale=trunc(iw/2)*2:trunc(ih/2)*2", "-pix_fmt", "yuv420p", "-c:v", "libx264", str(out)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"turntable.mp4 skipped: ffmpeg failed ({_one_line(e)})"
        if proc.returncode != 0 or not out.is_file():
            err = " ".join(proc.stderr.split())[-200:]
            return f"turntable.mp4 skipped: ffmpeg exited with {proc.returncode} ({err})"
        out.replace(path)
    return None


def write_outputs(
    result: GenerationResult,
    out_dir: str | Path,
    *,
    turntable: int = 36,
    turntable_size: int | None = None,
    fps: float = 12.0,
    mp4: bool = True,
) -> dict[str, Path]:
    """Write a generation's files into ``out_dir``; returns them by name.

    ``view_00.png`` ... (the generated views), ``input.png`` (the prepared input view),
    ``grid.png`` (input and views; below, the Gaussians rendered at the views), ``gaussians.ply``
    (3DGS), ``turntable.gif`` (and ``turntable.mp4`` when ffmpeg is on PATH), ``steps.png``
    (the denoising-step strip), ``mesh.glb`` and ``mesh.obj`` when ``result.mesh`` is set, and
    ``generation.json`` (settings, seed, checkpoint, device, timings in seconds per stage, notes;
    written last, so a folder with it is finished). Each file is written atomically. The stages'
    timings and any notes (e.g. "no ffmpeg") are also added to ``result.timings`` and ``result.notes``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    timings, notes = result.timings, result.notes

    def put(name: str, data: bytes) -> None:
        atomic_write_bytes(out_dir / name, data)
        files[name] = out_dir / name

    t0 = time.perf_counter()
    for i, view in enumerate(result.views):
        put(f"view_{i:02d}.png", _png_bytes(_to_pil(view)))
    put("input.png", _png_bytes(_to_pil(result.input.tensor)))
    put("grid.png", _png_bytes(grid_image(result)))
    timings["write_views"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    files["gaussians.ply"] = save_ply(out_dir / "gaussians.ply", result.gaussians)
    timings["write_ply"] = time.perf_counter() - t0

    if turntable > 0:
        t0 = time.perf_counter()
        frames = turntable_frames(result, turntable, turntable_size)
        put("turntable.gif", _gif_bytes(frames, fps))
        if mp4:
            note = _write_mp4(frames, out_dir / "turntable.mp4", fps)
            if note:
                notes.append(note)
            else:
                files["turntable.mp4"] = out_dir / "turntable.mp4"
        timings["turntable"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    put("steps.png", _png_bytes(step_strip_image(result)))
    timings["step_strip"] = time.perf_counter() - t0

    if result.mesh is not None:
        from .meshing import write_mesh

        t0 = time.perf_counter()
        files |= write_mesh(result.mesh, out_dir)
        timings["write_mesh"] = time.perf_counter() - t0

    timings["total"] = sum(v for k, v in timings.items() if k != "total")
    record = {
        "settings": result.settings,
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
        "sample_s_per_step": round(timings["sample"] / result.settings["steps"], 4),
        "turntable_frames": turntable,
        "strip_steps": [r.i for r in result.steps],
        "files": sorted([*files, "generation.json"]),
        "notes": notes,
    }
    atomic_write_text(out_dir / "generation.json", json.dumps(record, indent=2))
    files["generation.json"] = out_dir / "generation.json"
    return files
