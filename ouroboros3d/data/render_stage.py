"""The ``render`` stage: pick objects per split, draw their views, render them in parallel.

Views: each object is seen from the ``camera.view_frames`` of a ``camera.orbit_frames``-frame
orbit (radius ``camera.radius``, field of view ``camera.fov_deg``) at ONE elevation. Both the
elevation (uniform in the split's ``elevation_deg`` range) and an azimuth offset of the
whole orbit (uniform in [0, 360)) are drawn per object from a hash of (seed, object id), so
the input view (view 0, orbit frame 0) shows each object from its own side and height, and
the draw does not depend on which other objects are rendered. Both are rounded to 1e-4
degree, and the rounded values are what is rendered and recorded.

Objects (:mod:`.splits`): a split takes all objects of its source, or, when there are more than
``max_objects``, a random subset of that size drawn from the seed (then sorted by id). With
``data.eval_textured`` the eval split additionally gets every textured ``libero`` scan that
``data.train.textured_objects`` did not put into training.

Bad input (a mesh that fails to load, is empty, or whose input view shows no pixel) is
recorded as skipped in the manifest with its reason and the stage goes on; it fails with
:class:`DatasetTooSmallError` only when a split keeps fewer than ``data.min_objects`` objects.
"""

from __future__ import annotations

import collections
import hashlib
import io
import itertools
import json
import multiprocessing
import shutil
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config import Params
from ..errors import UserError
from ..geometry.cameras import RenderSettings, object_cameras
from ..progress import bar as progress_bar
from . import layout
from .mesh import EmptyMeshError, normalize_to_unit_box
from .render import RenderedViews, render_views, require_embree
from .sources import MeshObject
from .splits import (
    ORBIT_MARK,
    SPLITS,
    DatasetTooSmallError,
    base_object_id,
    hash_seed,
    plan_objects,
    real_training_objects,
    select_objects,
    split_objects,
    textured_training_objects,
)

__all__ = [
    "MANIFEST_COLUMNS",
    "ORBIT_MARK",
    "RENDERER_VERSION",
    "SPLITS",
    "DatasetTooSmallError",
    "ObjectJob",
    "RenderSettings",
    "base_object_id",
    "draw_view_angles",
    "object_cameras",
    "plan_objects",
    "plan_split",
    "read_manifest",
    "real_training_objects",
    "render_dataset",
    "render_object",
    "select_objects",
    "textured_training_objects",
]

MANIFEST_COLUMNS = [
    "object_id",
    "split",
    "source",
    "licence",
    "status",
    "skip_reason",
    "faces",
    "elevation_deg",
    "azimuth_offset_deg",
]
RENDERER_VERSION = 1  # bump when a change to the renderer alters its output (invalidates --resume)


@dataclass(frozen=True)
class ObjectJob:
    obj: MeshObject
    split: str
    elevation_deg: float
    azimuth_offset_deg: float
    settings: RenderSettings
    split_dir: str
    resume: bool = False


def draw_view_angles(seed: int, object_id: str, elevation_range: tuple[float, float]) -> tuple[float, float]:
    """(elevation, azimuth offset) in degrees for an object, a pure function of (seed, object id)."""
    rng = np.random.default_rng(hash_seed("views", seed, object_id))
    low, high = elevation_range
    elevation = low + (high - low) * rng.random()
    azimuth_offset = 360.0 * rng.random()
    return round(float(elevation), 4), round(float(azimuth_offset), 4)


def plan_split(params: Params, split: str, out_dir: str | Path, resume: bool = False) -> list[ObjectJob]:
    """The render jobs of one split: ``"train"``, ``"val"`` (for choosing settings) or ``"eval"``."""
    split_params = getattr(params.data, split)
    objects = split_objects(params, split)
    settings = params.render_settings
    split_dir = str(Path(out_dir) / split)
    jobs = []
    for obj in objects:
        elevation, azimuth_offset = draw_view_angles(params.seed, obj.object_id, split_params.elevation_deg)
        jobs.append(ObjectJob(obj, split, elevation, azimuth_offset, settings, split_dir, resume))
    return jobs


def _render_key(job: ObjectJob) -> str:
    """Fingerprint of what an object's renders depend on, stored in cameras.json for --resume."""
    what = [RENDERER_VERSION, job.obj.object_id, job.elevation_deg, job.azimuth_offset_deg, asdict(job.settings)]
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def _manifest_row(job: ObjectJob, status: str, reason: str = "", faces: int = 0) -> dict:
    reason = " ".join(reason.split())[:300]  # one line per object in the CSV, however long the loader's error
    return {
        "object_id": job.obj.object_id,
        "split": job.split,
        "source": job.obj.source,
        "licence": job.obj.licence,
        "status": status,
        "skip_reason": reason,
        "faces": int(faces),
        "elevation_deg": job.elevation_deg,
        "azimuth_offset_deg": job.azimuth_offset_deg,
    }


def _write_object(job: ObjectJob, views: RenderedViews, K, c2w, azimuths, faces: int) -> None:
    settings = job.settings
    cameras = {
        "object_id": job.obj.object_id,
        "source": job.obj.source,
        "licence": job.obj.licence,
        "faces": faces,
        "elevation_deg": job.elevation_deg,
        "azimuth_offset_deg": job.azimuth_offset_deg,
        "azimuth_deg": azimuths.tolist(),
        "radius": settings.radius,
        "fov_deg": settings.fov_deg,
        "orbit_frames": settings.orbit_frames,
        "view_frames": list(settings.view_frames),
        "resolution": settings.resolution,
        "height": settings.resolution,
        "width": settings.resolution,
        "K": K.tolist(),
        "c2w": c2w.tolist(),
        "render_key": _render_key(job),
    }
    with layout.atomic_object_dir(job.split_dir, job.obj.object_id) as tmp:
        for v in range(len(views.rgb)):
            layout.write_png(tmp / layout.rgb_file(v), views.rgb[v])
            layout.write_png(tmp / layout.alpha_file(v), views.alpha[v])
        np.save(tmp / layout.DEPTH_FILE, views.depth)
        layout.write_json(tmp / layout.CAMERAS_FILE, cameras)


def _finished_earlier(job: ObjectJob) -> dict | None:
    """The cameras.json of a complete earlier render of exactly this job, if any."""
    path = Path(job.split_dir) / job.obj.object_id / layout.CAMERAS_FILE
    try:
        cameras = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return cameras if cameras.get("render_key") == _render_key(job) else None


def render_object(job: ObjectJob) -> dict:
    """Load, normalise, render and write one object; returns its manifest row (never raises for bad input)."""
    if job.resume and (earlier := _finished_earlier(job)) is not None:
        return _manifest_row(job, "ok", faces=earlier["faces"])
    try:
        mesh = job.obj.load()
    except Exception as e:  # any loader error is the object's problem, not the stage's
        return _manifest_row(job, "skipped", f"load failed: {type(e).__name__}: {e}")
    faces = len(mesh.faces)
    try:
        mesh = normalize_to_unit_box(mesh, job.obj.up_axis)
    except EmptyMeshError as e:
        return _manifest_row(job, "skipped", f"empty mesh: {e}", faces)
    K, c2w, azimuths = object_cameras(job.settings, job.elevation_deg, job.azimuth_offset_deg)
    res = job.settings.resolution
    try:
        views = render_views(mesh, K, c2w, res, res)
    except Exception as e:
        return _manifest_row(job, "skipped", f"render failed: {type(e).__name__}: {e}", faces)
    if views.foreground_pixels()[0] == 0:
        return _manifest_row(job, "skipped", "rendered no pixels in the input view", faces)
    _write_object(job, views, K, c2w, azimuths, faces)
    return _manifest_row(job, "ok", faces=faces)


def _init_worker() -> None:
    torch.set_num_threads(1)  # one process per core; nested threading only oversubscribes


def _run_jobs(jobs: list[ObjectJob], workers: int, progress: bool) -> list[dict]:
    bar = dict(total=len(jobs), desc="render", unit="obj", disable=not progress, file=sys.stderr, mininterval=0.5)
    if workers <= 1 or len(jobs) <= 1:
        return [render_object(job) for job in progress_bar(jobs, **bar)]
    # fork (as torch's DataLoader does; workers drop to one thread, so the parent's OpenMP pool is never
    # touched); spawn where fork is unavailable
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(min(workers, len(jobs)), initializer=_init_worker) as pool:
        return list(progress_bar(pool.imap(render_object, jobs, chunksize=1), **bar))


def read_manifest(out_dir: str | Path) -> pd.DataFrame:
    """The manifest of a renders folder (an empty frame with the columns when there is none)."""
    path = Path(out_dir) / layout.MANIFEST_FILE
    if not path.is_file():
        return pd.DataFrame(columns=MANIFEST_COLUMNS)
    return read_manifest_file(path)


def read_manifest_file(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False, dtype={"object_id": str, "skip_reason": str})


def _check_disjoint(manifest: pd.DataFrame) -> None:
    """No two splits may share an object (ids carry the source name, so this is per source too)."""
    ok = manifest[manifest.status == "ok"]
    objects = ok.object_id.map(base_object_id)  # several orbits of one object are one object
    for a, b in itertools.combinations(SPLITS, 2):
        shared = sorted(set(objects[ok.split == a]) & set(objects[ok.split == b]))
        if shared:
            raise ValueError(
                f"{a} and {b} share {len(shared)} object(s), e.g. {shared[:3]}: give the splits different sources"
            )


def _summary(manifest: pd.DataFrame, split: str) -> str:
    rows = manifest[manifest.split == split]
    skipped = rows[rows.status == "skipped"]
    reasons = collections.Counter(r.split(":")[0] for r in skipped.skip_reason)
    detail = ", ".join(f"{why}: {n}" for why, n in sorted(reasons.items()))
    return f"{split}: {int((rows.status == 'ok').sum())} ok, {len(skipped)} skipped" + (
        f" ({detail})" if detail else ""
    )


def _remove_unlisted_objects(split_dir: Path, keep: set[str]) -> None:
    """Drop object folders of earlier runs that this run did not produce, so folder == manifest."""
    for object_id in layout.list_objects(split_dir):
        if object_id not in keep:
            shutil.rmtree(split_dir / object_id)


def render_dataset(
    params: Params,
    out_dir: str | Path = "data/renders",
    splits: tuple[str, ...] = SPLITS,
    resume: bool = False,
    progress: bool = True,
    workers: int | None = None,
    shard: tuple[int, int] | None = None,
) -> pd.DataFrame:
    """Render ``splits`` into ``out_dir/<split>/<object_id>/`` and write ``out_dir/manifest.csv``.

    ``resume`` reuses object folders whose recorded render fingerprint matches. Rows of
    splits not rendered now are kept from an existing manifest. Returns the manifest;
    raises :class:`DatasetTooSmallError` (after writing it) if a split is too small.

    ``shard`` = (i, n) renders only every n-th planned object from the i-th (machines render
    their shards into one shared folder) and writes that shard's rows to its own manifest;
    :func:`merge_shards` then writes the manifest, the same as one unsharded render's.
    """
    require_embree()
    out_dir = Path(out_dir)
    jobs = []
    for split in splits:
        layout.remove_stale_temporaries(out_dir / split)
        jobs += plan_split(params, split, out_dir, resume)
    planned = pd.DataFrame({"object_id": [j.obj.object_id for j in jobs], "split": [j.split for j in jobs]})
    _check_disjoint(planned.assign(status="ok"))  # fail before rendering anything; checked again on the manifest
    if shard is not None:
        index, count = shard
        if not 0 <= index < count:
            raise ValueError(f"shard {index}/{count}: need 0 <= i < n")
        jobs = jobs[index::count]
    rows = _run_jobs(jobs, params.data.workers if workers is None else workers, progress)
    new = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    if shard is not None:
        _write_csv(new, out_dir / shard_manifest_name(*shard))
        print(f"shard {shard[0]}/{shard[1]}: {len(new)} objects; when every shard is done: --merge {shard[1]}")
        return new
    return _finish_manifest(params, out_dir, splits, new)


def shard_manifest_name(index: int, count: int) -> str:
    return f"manifest.shard-{index}-of-{count}.csv"


def merge_shards(params: Params, out_dir: str | Path, count: int, splits: tuple[str, ...] = SPLITS) -> pd.DataFrame:
    """The manifest of ``count`` shards rendered by ``render_dataset(..., shard=(i, count))``."""
    out_dir = Path(out_dir)
    paths = [out_dir / shard_manifest_name(i, count) for i in range(count)]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{out_dir}: shard manifests missing: {missing} (render them with --shard I/{count})")
    new = pd.concat([read_manifest_file(p) for p in paths], ignore_index=True)
    manifest = _finish_manifest(params, out_dir, splits, new)
    for p in paths:
        p.unlink()
    return manifest


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    buffer = io.StringIO()
    df.to_csv(buffer, index=False, lineterminator="\n")
    layout.atomic_write_bytes(path, buffer.getvalue().encode())


def _finish_manifest(params: Params, out_dir: Path, splits: tuple[str, ...], new: pd.DataFrame) -> pd.DataFrame:
    kept = read_manifest(out_dir)
    kept = kept[~kept.split.isin(splits)]
    manifest = pd.concat([kept, new], ignore_index=True) if len(kept) else new
    manifest = manifest.sort_values(["split", "object_id"], kind="stable").reset_index(drop=True)
    _check_disjoint(manifest)
    for split in splits:
        ok = new[(new.split == split) & (new.status == "ok")]
        _remove_unlisted_objects(out_dir / split, set(ok.object_id))
    _write_csv(manifest, out_dir / layout.MANIFEST_FILE)

    for split in splits:
        print(_summary(manifest, split))
    too_small = [
        f"'{s}' has {int(((new.split == s) & (new.status == 'ok')).sum())}"
        for s in splits
        if ((new.split == s) & (new.status == "ok")).sum() < params.data.min_objects
    ]
    if too_small:
        raise DatasetTooSmallError(
            f"split {', '.join(too_small)} usable object(s), fewer than data.min_objects={params.data.min_objects}; "
            f"see the skip reasons in {out_dir / layout.MANIFEST_FILE}"
        )
    return manifest
