"""The on-disk layout of rendered objects, with atomic, byte-reproducible writers and readers.

One folder per object; see :mod:`ouroboros3d.data` for the whole tree. Every object folder
is written into a hidden temporary folder beside it and renamed into place when complete,
so an interrupted run leaves only whole objects (and ``.tmp-*`` leftovers that the next run
deletes). PNGs are written by PIL with no metadata, arrays with ``np.save``, JSON with sorted
keys: re-running with the same inputs gives byte-identical files.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..io import TMP_PREFIX, atomic_write_bytes

__all__ = [
    "CAMERAS_FILE",
    "CCM_FILE",
    "DEPTH_FILE",
    "MANIFEST_FILE",
    "alpha_file",
    "atomic_object_dir",
    "atomic_write_bytes",
    "list_objects",
    "read_cameras",
    "read_views",
    "remove_stale_temporaries",
    "rgb_file",
    "write_json",
    "write_png",
]

CAMERAS_FILE = "cameras.json"
DEPTH_FILE = "depth.npy"
CCM_FILE = "ccm.npy"
MANIFEST_FILE = "manifest.csv"
_TMP_PREFIX = TMP_PREFIX


def rgb_file(view: int) -> str:
    return f"rgb_{view:02d}.png"


def alpha_file(view: int) -> str:
    return f"alpha_{view:02d}.png"


@contextmanager
def atomic_object_dir(parent: str | Path, name: str) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``parent/name`` when the block completes.

    An existing ``parent/name`` is replaced; on an exception the temporary folder is removed.
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{name}-", dir=parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes 0700 folders
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    final = parent / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def remove_stale_temporaries(folder: str | Path) -> None:
    """Delete ``.tmp-*`` files and folders an interrupted run left in ``folder``."""
    folder = Path(folder)
    if folder.is_dir():
        for p in folder.glob(f"{_TMP_PREFIX}*"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def write_png(path: str | Path, array: np.ndarray) -> None:
    """An (H, W) or (H, W, 3) uint8 array as a PNG, with no metadata (reproducible bytes)."""
    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG", optimize=False)


def write_json(path: str | Path, data: dict) -> None:
    Path(path).write_text(json.dumps(data, sort_keys=True, indent=1) + "\n")


def read_cameras(object_dir: str | Path) -> dict:
    """``cameras.json`` with ``K`` (V,3,3) and ``c2w`` (V,4,4) as float32 tensors."""
    cams = json.loads((Path(object_dir) / CAMERAS_FILE).read_text())
    cams["K"] = torch.tensor(cams["K"], dtype=torch.float32)
    cams["c2w"] = torch.tensor(cams["c2w"], dtype=torch.float32)
    return cams


def read_views(object_dir: str | Path, num_views: int) -> tuple[np.ndarray, np.ndarray]:
    """RGB (V, H, W, 3) and alpha (V, H, W) uint8 arrays of an object folder."""
    object_dir = Path(object_dir)
    rgb = np.stack([np.asarray(Image.open(object_dir / rgb_file(v)).convert("RGB")) for v in range(num_views)])
    alpha = np.stack([np.asarray(Image.open(object_dir / alpha_file(v)).convert("L")) for v in range(num_views)])
    return rgb, alpha


def list_objects(split_dir: str | Path) -> list[str]:
    """Ids of the complete objects in a split folder (sub-folders with a cameras.json), sorted."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        return []
    return sorted(p.name for p in split_dir.iterdir() if not p.name.startswith(".") and (p / CAMERAS_FILE).is_file())
