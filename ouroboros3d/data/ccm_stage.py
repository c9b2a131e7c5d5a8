"""The ``ccm`` stage: a canonical coordinate map per rendered object, from its depth and cameras.

For every object rendered ``ok`` (per the manifest, or every complete object folder when
there is no manifest) this reads ``depth.npy`` and ``cameras.json``, applies
:func:`ouroboros3d.geometry.ccm.depth_to_ccm` with the ONE global normalisation of ``params.ccm``
and writes ``<ccm_dir>/<split>/<object_id>/ccm.npy``: float16, shape (V, 3, H, W), values in
[0, 1], background = ``ccm.background``. float16 keeps the CCM to within 5e-4, i.e. 6e-4 of
the unit box at the default scale 0.8, and halves the disk space.

Every object of every split asked for is checked (:func:`ouroboros3d.data.layout.check_split`:
its files' headers) before the first CCM is written, so a damaged render stops the stage with
one line naming the object and the file, and leaves the CCM folder as it was.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..geometry.ccm import CCMNormalization, depth_to_ccm
from ..errors import UserError, one_line
from ..progress import bar as progress_bar
from . import layout
from .render_stage import SPLITS, DatasetTooSmallError, read_manifest

__all__ = ["CCM_DTYPE", "object_ccm", "ok_objects", "write_ccms"]

CCM_DTYPE = np.float16
_RERUN_RENDER = "re-run the render stage (`dvc repro -f render`)"


def object_ccm(object_dir: str | Path, norm: CCMNormalization = CCMNormalization()) -> torch.Tensor:
    """The CCM (V, 3, H, W) float32 of one rendered object folder."""
    object_dir = Path(object_dir)
    cams = layout.read_cameras(object_dir)
    depth = torch.from_numpy(np.load(object_dir / layout.DEPTH_FILE))
    return depth_to_ccm(depth, cams["K"], cams["c2w"], norm)


def ok_objects(renders_dir: str | Path, split: str) -> list[str]:
    """Objects of a split to process: the manifest's ``ok`` rows, or the complete folders if no manifest."""
    manifest_file = Path(renders_dir) / layout.MANIFEST_FILE
    try:
        manifest = read_manifest(renders_dir)
    except ValueError as e:  # pandas' parser errors, UnicodeDecodeError
        raise UserError(f"{manifest_file} is not a readable CSV ({one_line(e)}); {_RERUN_RENDER}") from None
    missing_columns = sorted({"object_id", "split", "status"} - set(manifest.columns))
    if missing_columns:
        raise UserError(f"{manifest_file} lacks the column(s) {missing_columns}; {_RERUN_RENDER}")
    rows = manifest[manifest.split == split]
    if len(rows) == 0:
        layout.require_complete(Path(renders_dir) / split)
        return layout.list_objects(Path(renders_dir) / split)
    ids = sorted(rows.object_id[rows.status == "ok"])
    missing = [i for i in ids if not (Path(renders_dir) / split / i / layout.CAMERAS_FILE).is_file()]
    if missing:
        raise FileNotFoundError(
            f"the manifest lists {len(missing)} {split} object(s) as ok whose folder is missing or incomplete, "
            f"e.g. object {missing[0]!r}: {Path(renders_dir) / split / missing[0] / layout.CAMERAS_FILE} is missing; "
            f"{_RERUN_RENDER}"
        )
    return ids


def write_ccms(
    renders_dir: str | Path,
    ccm_dir: str | Path,
    norm: CCMNormalization = CCMNormalization(),
    splits: tuple[str, ...] = SPLITS,
    progress: bool = True,
) -> dict[str, list[str]]:
    """Write ``ccm_dir/<split>/<object_id>/ccm.npy`` for every rendered object; returns the ids per split."""
    done = {}
    for split in splits:  # every object checked before anything is written
        ids = ok_objects(renders_dir, split)
        if not ids:
            raise DatasetTooSmallError(
                f"no rendered {split} objects in {Path(renders_dir) / split}: run the render stage"
            )
        layout.check_split(Path(renders_dir) / split, ids)
        done[split] = ids
    for split, ids in done.items():
        split_out = Path(ccm_dir) / split
        layout.remove_stale_temporaries(split_out)
        for object_id in progress_bar(ids, desc=f"ccm {split}", unit="obj", disable=not progress):
            ccm = object_ccm(Path(renders_dir) / split / object_id, norm).numpy().astype(CCM_DTYPE)
            with layout.atomic_object_dir(split_out, object_id) as tmp:
                np.save(tmp / layout.CCM_FILE, ccm)
    return done
