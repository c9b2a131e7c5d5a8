"""The model's input view from a user's picture (see :func:`prepare_image`).

Input images are prepared the way the training renders look: an RGBA image's alpha is the
object mask and it is composited on white; an RGB image is assumed to show the object on a
plain, near-white background, which is what the mask is taken from. The object is cropped
to its mask's bounding box, centred, and rescaled so that the box's longer side fills
:func:`target_fill` of the frame, the fraction a unit-box object's longest side fills in the
training renders, then resized to the model's resolution. 16-bit and greyscale images are
scaled to 8 bits, never clipped.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..config import Params
from ..errors import GenerationError, one_line

__all__ = ["PreparedImage", "prepare_image", "target_fill"]

# Below these sizes an input is accepted with a warning: the object's box (its longer side) or the
# whole picture has too few pixels to show any detail, however large it is scaled at the model.
MIN_OBJECT_SIDE = 8
MIN_IMAGE_SIDE = 16
# An RGB pixel whose darkest channel is this far below white is object; the ramp between the
# two thresholds gives a soft edge (JPEG noise on a white background stays under the first).
WHITE_SOFT = (0.04, 0.10)
# A connected part of the mask is a speck (JPEG noise, dust, a stray pixel of a matte), left out of
# the object's box, when it has at most SPECK_PIXELS pixels or under SPECK_FRACTION of the largest
# part's: a 5x5 dust spot beside an object photographed at 500x500 px is one, while a detached
# 1-px-wide handle 200 px long is not (nor, at 32x32, a 3-px fragment of one beside a 200-px body).
SPECK_PIXELS = 2
SPECK_FRACTION = 0.0005


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
        # Pillow warns (on stderr, before any error line) about an image of more than
        # Image.MAX_IMAGE_PIXELS and refuses one of twice that: both are refused here, in one line
        with warnings.catch_warnings(), path.open("rb") as file:
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(file)
            img.load()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise GenerationError(
            f"{path} is too large to read safely: {one_line(e)} (Pillow's limit against decompression bombs); "
            "scale it down: the model sees it at a few hundred pixels a side"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise GenerationError(f"{path} is not a readable image (PNG or JPEG expected): {one_line(e)}") from None
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
    """Bounding box (left, top, right, bottom) of a boolean mask, ignoring specks (see SPECK_PIXELS).

    The mask is split into 8-connected components; the box holds every component that is not a
    speck, whole. (A morphological opening would also drop specks, but it erases every part of
    the object at most 2 px wide, a cup's handle or a chair's legs, which the crop then cut off.)
    """
    if not mask.any():
        return None
    from scipy import ndimage

    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel())[1:]  # pixels of component 1, 2, ...
    keep = sizes > max(SPECK_PIXELS, SPECK_FRACTION * sizes.max())
    if not keep.any():  # nothing but specks: a tiny object (which _warn_if_tiny reports) is all there is
        keep[:] = True
    boxes = [box for box, kept in zip(ndimage.find_objects(labels), keep, strict=True) if kept]
    top, left = min(b[0].start for b in boxes), min(b[1].start for b in boxes)
    bottom, right = max(b[0].stop for b in boxes), max(b[1].stop for b in boxes)
    return int(left), int(top), int(right), int(bottom)


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
