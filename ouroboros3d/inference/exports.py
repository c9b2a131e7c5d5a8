"""The files of a generation, written whole: :func:`write_outputs`.

The views, input and grid as PNG, the step strip and turntable (:mod:`~ouroboros3d.inference.pictures`),
the Gaussians as a 3DGS ``.ply``, the mesh when there is one, and last the record ``generation.json``
(settings, timings, notes, every file's SHA-256); the folder is replaced in one step
(:mod:`~ouroboros3d.inference.output_folder`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..files import atomic_write_bytes, atomic_write_text, file_sha256
from ..gaussians.container import save_ply
from .output_folder import RECORD_FILE, WHEN_WRITING, FolderState, write_folder
from .pictures import gif_bytes, grid_image, png_bytes, step_strip_image, to_pil, turntable_frames, write_mp4
from .result import GenerationResult

__all__ = ["write_outputs"]


def write_outputs(
    result: GenerationResult,
    out_dir: str | Path,
    *,
    turntable: int = 36,
    turntable_size: int | None = None,
    fps: float = 12.0,
    mp4: bool = True,
    expect: FolderState | object | None = WHEN_WRITING,
) -> dict[str, Path]:
    """Write a generation's files into the folder ``out_dir``, all at once; returns them by name.

    ``view_00.png`` ... (the generated views), ``input.png`` (the prepared input view),
    ``grid.png`` (input and views; below, the Gaussians rendered at the views), ``gaussians.ply``
    (3DGS), ``turntable.gif`` (and ``turntable.mp4`` when ffmpeg is on PATH), ``steps.png``
    (the denoising-step strip), ``mesh.glb`` and ``mesh.obj`` when ``result.mesh`` is set, and
    ``generation.json`` (settings, seed, checkpoint, device, timings in seconds per stage, notes,
    the files and their SHA-256; written last). The stages' timings and any notes (e.g. "no
    ffmpeg") are also added to ``result.timings`` and ``result.notes``.

    The folder is written whole (:func:`~ouroboros3d.inference.output_folder.write_folder`): a temporary
    folder beside ``out_dir`` renamed into place at once, replacing a previous generation's folder but
    never one of other files. ``expect`` is the state of ``out_dir``
    (:func:`~ouroboros3d.inference.output_folder.folder_state`) when the run began (default: when this
    call began): if another run has written ``out_dir`` since, this one's outputs are dropped with a
    GenerationError and the other's kept, so two runs into one folder never mix.
    """
    out_dir = Path(out_dir)
    names = write_folder(
        out_dir, lambda folder: _write_files(result, folder, turntable, turntable_size, fps, mp4), expect
    )
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
        put(f"view_{i:02d}.png", png_bytes(to_pil(view)))
    put("input.png", png_bytes(to_pil(result.input.tensor)))
    put("grid.png", png_bytes(grid_image(result)))
    timings["write_views"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    files["gaussians.ply"] = save_ply(out_dir / "gaussians.ply", result.gaussians)
    timings["write_ply"] = time.perf_counter() - t0

    if turntable > 0:
        t0 = time.perf_counter()
        frames = turntable_frames(result, turntable, turntable_size)
        put("turntable.gif", gif_bytes(frames, fps))
        if mp4:
            note = write_mp4(frames, out_dir / "turntable.mp4", fps)
            if note:
                notes.append(note)
            else:
                files["turntable.mp4"] = out_dir / "turntable.mp4"
        timings["turntable"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    put("steps.png", png_bytes(step_strip_image(result)))
    timings["step_strip"] = time.perf_counter() - t0

    if result.mesh is not None:
        from ..gaussians.meshing import write_mesh

        t0 = time.perf_counter()
        files |= write_mesh(result.mesh, out_dir)
        timings["write_mesh"] = time.perf_counter() - t0

    timings["total"] = sum(v for k, v in timings.items() if k != "total")
    record = {
        "settings": result.settings.to_json(),
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
        "sample_s_per_step": round(timings["sample"] / result.settings.steps, 4),
        "turntable_frames": turntable,
        "strip_steps": [r.i for r in result.steps],
        "files": sorted([*files, RECORD_FILE]),
        "sha256": {name: file_sha256(path) for name, path in sorted(files.items())},
        "notes": notes,
    }
    atomic_write_text(out_dir / RECORD_FILE, json.dumps(record, indent=2))
    return [*files, RECORD_FILE]
