"""The pictures of a generation: its views as PNG, the grid, the denoising-step strip and the turntable
(the Gaussians rendered on a 360° orbit, as GIF and, with ffmpeg, MP4).

:func:`~ouroboros3d.inference.exports.write_outputs` writes them; each is also usable alone.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..errors import one_line
from ..gaussians.splatting import render
from ..geometry import cameras
from .result import GenerationResult

__all__ = ["gif_bytes", "grid_image", "png_bytes", "step_strip_image", "to_pil", "turntable_frames", "write_mp4"]


def to_pil(image: torch.Tensor) -> Image.Image:
    arr = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(arr)


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _tile(image: torch.Tensor, size: int) -> Image.Image:
    img = to_pil(image)
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
    total = result.settings.steps
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
    elevation = result.settings.elevation_deg
    az = torch.arange(frames, dtype=torch.float32) * (360.0 / frames)
    c2w = cameras.orbit_c2w(az, elevation, params.camera.radius)
    K = cameras.intrinsics(params.camera.fov_deg, size).expand(frames, 3, 3).contiguous()
    device = result.settings.device
    gaussians = result.gaussians.to(device)
    images = []
    with torch.no_grad():
        for s in range(0, frames, chunk):
            out = render(gaussians, K[s : s + chunk].to(device), c2w[s : s + chunk].to(device), size, size)
            images.extend(to_pil(x) for x in out.rgb[0].cpu())
    bar_h = max(1, size // 64)
    for i, img in enumerate(images):
        ImageDraw.Draw(img).rectangle([0, size - bar_h, round(size * (i + 1) / frames) - 1, size - 1], fill=(96,) * 3)
    return images


def gif_bytes(frames: list[Image.Image], fps: float) -> bytes:
    buf = io.BytesIO()
    frames[0].save(
        buf, format="GIF", save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0, optimize=False
    )
    return buf.getvalue()


def write_mp4(frames: list[Image.Image], path: Path, fps: float) -> str | None:
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
            return f"turntable.mp4 skipped: ffmpeg failed ({one_line(e)})"
        if proc.returncode != 0 or not out.is_file():
            err = " ".join(proc.stderr.split())[-200:]
            return f"turntable.mp4 skipped: ffmpeg exited with {proc.returncode} ({err})"
        out.replace(path)
    return None
