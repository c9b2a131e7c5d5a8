"""The files of a generation: views, grid, Gaussians (.ply), turntable, step strip, mesh, record.

:func:`write_outputs` writes a :class:`~ouroboros3d.inference.generate.GenerationResult` to a folder, whole:
into a temporary folder beside it, ``generation.json`` (with every file's SHA-256) last, then
renamed into place in one step. :func:`is_complete` tells a finished, intact folder from the rest.
"""

from __future__ import annotations

import errno
import glob
import io
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

try:
    import fcntl
except ImportError:  # Windows: no locks, and leftovers are not removed
    fcntl = None

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..errors import GenerationError, one_line
from ..files import TMP_PREFIX, atomic_write_bytes, atomic_write_text, file_sha256
from ..gaussians.container import save_ply
from ..gaussians.splatting import render
from ..geometry import cameras

if TYPE_CHECKING:
    from .generate import GenerationResult

__all__ = [
    "ConcurrentWriteError",
    "check_output_folder",
    "folder_state",
    "grid_image",
    "is_complete",
    "remove_leftovers",
    "step_strip_image",
    "turntable_frames",
    "write_outputs",
]


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
            return f"turntable.mp4 skipped: ffmpeg failed ({one_line(e)})"
        if proc.returncode != 0 or not out.is_file():
            err = " ".join(proc.stderr.split())[-200:]
            return f"turntable.mp4 skipped: ffmpeg exited with {proc.returncode} ({err})"
        out.replace(path)
    return None


_UNSET = object()


def write_outputs(
    result: GenerationResult,
    out_dir: str | Path,
    *,
    turntable: int = 36,
    turntable_size: int | None = None,
    fps: float = 12.0,
    mp4: bool = True,
    expect: FolderState | object | None = _UNSET,
) -> dict[str, Path]:
    """Write a generation's files into the folder ``out_dir``, all at once; returns them by name.

    ``view_00.png`` ... (the generated views), ``input.png`` (the prepared input view),
    ``grid.png`` (input and views; below, the Gaussians rendered at the views), ``gaussians.ply``
    (3DGS), ``turntable.gif`` (and ``turntable.mp4`` when ffmpeg is on PATH), ``steps.png``
    (the denoising-step strip), ``mesh.glb`` and ``mesh.obj`` when ``result.mesh`` is set, and
    ``generation.json`` (settings, seed, checkpoint, device, timings in seconds per stage, notes,
    the files and their SHA-256; written last). The stages' timings and any notes (e.g. "no
    ffmpeg") are also added to ``result.timings`` and ``result.notes``.

    The files are written into a temporary folder beside ``out_dir`` (``.tmp-<name>-*``), which is
    then renamed to ``out_dir`` in one step, replacing a previous generation's folder there: a
    reader sees the old outputs or the new ones, whole, never a mix, and an interrupted run leaves
    only its temporary folder (removed by a later run). A folder holding anything but a
    generation's files is never replaced (:func:`check_output_folder`). ``expect`` is the state
    of ``out_dir`` (:func:`folder_state`) when the run began (default: when this call began): if
    another run has written ``out_dir`` since, this one's outputs are dropped with a
    GenerationError and the other's kept, so two runs into one folder never mix.
    """
    out_dir = Path(out_dir)
    target = Path(os.path.abspath(out_dir))  # "." or "a/..": a folder with a name, in a parent
    if target.is_symlink():
        target = target.resolve()  # replace what the link points to, not the link
    check_output_folder(target)
    if expect is _UNSET:
        expect = folder_state(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _staging_folder(target) as staged:
        names = _write_files(result, staged, turntable, turntable_size, fps, mp4)
        _commit(staged, target, expect)
    remove_leftovers(target)
    return {name: out_dir / name for name in names}


def _write_files(
    result: GenerationResult, out_dir: Path, turntable: int, turntable_size: int | None, fps: float, mp4: bool
) -> list[str]:
    """Write the files (generation.json last) into ``out_dir``; returns their names."""
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
        from ..gaussians.meshing import write_mesh

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
        "files": sorted([*files, RECORD_FILE]),
        "sha256": {name: file_sha256(path) for name, path in sorted(files.items())},
        "notes": notes,
    }
    atomic_write_text(out_dir / RECORD_FILE, json.dumps(record, indent=2))
    return [*files, RECORD_FILE]


# --- one output folder, written whole --------------------------------------------------------

RECORD_FILE = "generation.json"
# the names write_outputs writes (a folder holding only these, and leftovers, may be replaced)
OUTPUT_NAMES = re.compile(
    r"view_\d+\.png|input\.png|grid\.png|gaussians\.ply|turntable\.(gif|mp4)|steps\.png|mesh\.(glb|obj)|generation\.json"
)
LEFTOVER_PREFIXES = (TMP_PREFIX, ".mp4-")  # what an interrupted write leaves (also by earlier versions)
# a temporary folder younger than this is never removed as a leftover: its run may have created it
# an instant ago and not locked it yet (runs lock theirs; an unlocked, older one is an interrupted run's)
LEFTOVER_MIN_AGE_S = 30.0

FolderState = tuple[int, int, int]  # (st_dev, st_ino, st_mtime_ns) of a folder


def folder_state(folder: str | Path) -> FolderState | None:
    """What identifies ``folder``'s current content (None: absent): it changes when a run replaces the
    folder or writes into it. :func:`write_outputs` compares it before replacing the folder."""
    try:
        st = os.stat(folder)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns


def check_output_folder(out_dir: str | Path) -> None:
    """GenerationError unless ``out_dir`` can receive a generation's files: a folder that is absent
    (its nearest existing ancestor a writable folder), empty, or holding a generation's files only.
    A folder holding anything else is not replaced: the user's files would be lost."""
    out_dir = Path(out_dir)
    if out_dir.exists() or out_dir.is_symlink():
        if not out_dir.is_dir():
            raise GenerationError(f"{out_dir} exists and is not a folder: the outputs go into a folder")
        try:
            entries = list(os.scandir(out_dir))
        except OSError as e:
            raise GenerationError(f"cannot read the output folder {out_dir}: {one_line(e)}") from None
        foreign = sorted(
            e.name + ("/" if e.is_dir() else "")
            for e in entries
            if not (e.name.startswith(LEFTOVER_PREFIXES) or (OUTPUT_NAMES.fullmatch(e.name) and e.is_file()))
        )
        if foreign:
            more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
            raise GenerationError(
                f"{out_dir} holds files that are not a generation's outputs ({', '.join(foreign[:3])}{more}); "
                "the outputs replace the whole folder: choose a new or empty one"
            )
    parent = Path(os.path.abspath(out_dir)).parent
    while not (parent.exists() or parent.is_symlink()):
        parent = parent.parent
    if not parent.is_dir():
        raise GenerationError(f"cannot write to {out_dir}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise GenerationError(f"cannot write to {out_dir}: {parent} is not writable")


def is_complete(out_dir: str | Path, required: tuple[str, ...] = ()) -> bool:
    """Whether ``out_dir`` holds one run's complete, intact outputs (what --skip-existing trusts).

    Its generation.json (written last) lists the files and their SHA-256: each must be there with
    that content, as must ``required`` (e.g. the mesh files). A folder with a leftover of an
    interrupted write (``.tmp-*``) in it, or with a record of an earlier version (no checksums),
    is not complete.
    """
    out_dir = Path(out_dir)
    try:
        if any(name.startswith(LEFTOVER_PREFIXES) for name in os.listdir(out_dir)):
            return False
        record = json.loads((out_dir / RECORD_FILE).read_text())
        files, sums = list(record["files"]), dict(record["sha256"])
        if RECORD_FILE not in files or set(sums) != set(files) - {RECORD_FILE} or not set(required) <= set(files):
            return False
        return all((out_dir / n).is_file() and file_sha256(out_dir / n) == digest for n, digest in sums.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def remove_leftovers(out_dir: str | Path) -> list[Path]:
    """Remove the temporary folders interrupted runs into ``out_dir`` left beside it; returns them.

    A run's own is locked while it writes (and young when just made): those are left alone.
    """
    out_dir = Path(out_dir)
    removed = []
    try:
        candidates = sorted(out_dir.parent.glob(f"{TMP_PREFIX}{glob.escape(out_dir.name)}-*"))
    except OSError:
        return removed
    for path in candidates:
        try:
            if not path.is_dir() or path.is_symlink() or time.time() - path.stat().st_mtime < LEFTOVER_MIN_AGE_S:
                continue
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            if fcntl is None:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # a live run holds it (or locks are not supported here: leave it)
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        finally:
            os.close(fd)
    return removed


@contextmanager
def _staging_folder(out_dir: Path) -> Iterator[Path]:
    """A new temporary folder beside ``out_dir``, locked while this run writes it; removed unless it
    was renamed (committed) meanwhile."""
    staged = None
    fd = None
    try:
        staged = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{out_dir.name}-", dir=out_dir.parent))
        fd = os.open(staged, os.O_RDONLY)
        if fcntl is not None:
            with suppress(OSError):  # a file system without locks: leftovers are then never removed
                fcntl.flock(fd, fcntl.LOCK_EX)
        os.chmod(staged, 0o755)  # mkdtemp makes 0700 folders
        yield staged
    finally:
        if fd is not None:
            os.close(fd)
        if staged is not None and staged.exists():
            shutil.rmtree(staged, ignore_errors=True)


class ConcurrentWriteError(GenerationError):
    """Another run wrote the output folder while this one ran: its outputs were kept, this run's dropped."""


def _commit(staged: Path, final: Path, expect: FolderState | None) -> None:
    """Rename the complete folder ``staged`` to ``final`` (atomic), replacing the folder there if it is
    still the one this run saw (``expect``); otherwise another run wrote it since: ConcurrentWriteError."""
    clash = ConcurrentWriteError(
        f"another run wrote {final} while this one ran: its outputs were kept and this run's dropped "
        "(run again to replace them)"
    )
    try:
        os.rename(staged, final)  # atomic; succeeds where final is absent or an empty folder
        return
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise GenerationError(f"cannot write {final}: {one_line(e)}") from None
    if folder_state(final) != expect:
        raise clash
    check_output_folder(final)  # still a generation's folder: never move a user's files away
    old = final.parent / f"{TMP_PREFIX}{final.name}-old-{secrets.token_hex(4)}"
    try:
        os.rename(final, old)
    except FileNotFoundError:  # another run is replacing it right now
        raise clash from None
    moved = folder_state(old)
    if moved is None or moved[:2] != expect[:2]:  # another run replaced it between check and move: put it back
        with suppress(OSError):
            os.rename(old, final)
        raise clash
    try:
        os.rename(staged, final)
    except OSError as e:  # another run committed into the gap: keep its outputs
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise clash from None
        with suppress(OSError):
            os.rename(old, final)  # put the previous outputs back
        raise GenerationError(f"cannot write {final}: {one_line(e)}") from None
    finally:
        shutil.rmtree(old, ignore_errors=True)
