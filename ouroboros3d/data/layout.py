"""The on-disk layout of rendered objects, with atomic, byte-reproducible writers and readers.

One folder per object; see :mod:`ouroboros3d.data` for the whole tree. Every object folder
is written into a hidden temporary folder beside it and renamed into place when complete,
so an interrupted run leaves only whole objects (and ``.tmp-*`` leftovers that the next run
deletes). PNGs are written by PIL with no metadata, arrays with ``np.save``, JSON with sorted
keys: re-running with the same inputs gives byte-identical files.

Readers of these folders check an object's files once, cheaply, before reading any
(:func:`check_object`, :func:`check_ccm`: the JSON, the ``.npy`` headers, the PNG headers and
ends, none decoded), so a damaged or stale object stops a stage with one line naming the
object, the file, what is wrong and how to re-create it (:class:`CorruptObjectError`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import UserError, one_line
from ..files import TMP_PREFIX, atomic_write_bytes

__all__ = [
    "CAMERAS_FILE",
    "CCM_FILE",
    "DEPTH_FILE",
    "MANIFEST_FILE",
    "CorruptObjectError",
    "alpha_file",
    "atomic_object_dir",
    "atomic_write_bytes",
    "check_ccm",
    "check_object",
    "check_split",
    "incomplete_objects",
    "list_objects",
    "npy_header",
    "png_size",
    "read_cameras",
    "read_views",
    "remove_stale_temporaries",
    "require_complete",
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


# --- checks: every file of an object, read only as far as its header --------------------------------------------

RERENDER = (
    "re-render it: delete {folder} and run `python experiments/render.py --resume`, or re-run `dvc repro -f render`"
)
RECCM = "re-create it with the ccm stage (`dvc repro -f ccm`, or `python experiments/ccm.py`)"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the empty IEND chunk every PNG ends with
_NUMERIC = "fiu"  # float, signed and unsigned integer arrays: what the readers convert to float32


class CorruptObjectError(UserError):
    """A file of a rendered object (or of its CCM) is missing, damaged or does not fit the others."""


def npy_header(path: str | Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a ``.npy`` file from its header alone.

    ValueError (the problem, to follow the file's name) if the file is not a whole ``.npy`` array: no
    or a broken header, an array of Python objects (a pickle, never loaded), or fewer bytes than the
    header promises (truncated).
    """
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported format version {version[0]}.{version[1]}")
        except (ValueError, EOFError, SyntaxError, UnicodeDecodeError, OverflowError, struct.error) as e:
            raise ValueError(f"is not a NumPy .npy array file ({one_line(e)})") from None
        data_start, size = f.tell(), os.fstat(f.fileno()).st_size
    if dtype.hasobject:
        raise ValueError("holds Python objects (a pickled array), which is never loaded")
    expected = data_start + math.prod(shape) * dtype.itemsize
    if size < expected:
        raise ValueError(f"is truncated: {size} bytes, its header promises {expected}")
    return tuple(shape), dtype


def png_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of a PNG file from its header; ValueError if it is not a PNG or its end is cut off."""
    fd = os.open(path, os.O_RDONLY)  # two small reads, no buffered file object: ~15 µs a file
    try:
        head = os.pread(fd, 24, 0)
        size = os.fstat(fd).st_size
        tail = os.pread(fd, len(_PNG_END), size - len(_PNG_END)) if size >= len(_PNG_END) + 24 else b""
    finally:
        os.close(fd)
    if head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise ValueError("is not a PNG image")
    width, height = struct.unpack(">II", head[16:24])
    if tail != _PNG_END:
        raise ValueError("is truncated (it does not end with the PNG end chunk)")
    return width, height


def _matrices(cams: dict, key: str, n: int) -> int:
    """The number of (n, n) matrices under ``cams[key]``; ValueError saying what is wrong."""
    if key not in cams:
        raise ValueError(f"lacks the key {key!r}")
    try:
        array = np.asarray(cams[key], dtype=np.float64)
    except (ValueError, TypeError):
        raise ValueError(f"has a {key!r} that is not a list of {n}x{n} matrices of numbers") from None
    if array.ndim != 3 or array.shape[1:] != (n, n) or len(array) == 0:
        raise ValueError(f"has a {key!r} of shape {array.shape}, not (views, {n}, {n})")
    if not np.isfinite(array).all():
        raise ValueError(f"has a {key!r} with non-finite numbers")
    return len(array)


def _check_cameras(path: Path) -> int:
    """The number of views of a cameras.json; ValueError saying what is wrong."""
    try:
        cams = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError("is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(cams, dict):
        raise ValueError(f"is a JSON {type(cams).__name__}, not an object with 'K' and 'c2w'")
    views, views_c2w = _matrices(cams, "K", 3), _matrices(cams, "c2w", 4)
    if views != views_c2w:
        raise ValueError(f"has {views} intrinsics 'K' but {views_c2w} poses 'c2w'")
    return views


def check_object(object_dir: str | Path) -> tuple[int, int, int]:
    """Check a rendered object's files, reading headers only; returns its (views, height, width).

    cameras.json must parse and hold ``K`` (V,3,3) and ``c2w`` (V,4,4); depth.npy must be a whole
    numeric (V, H, W) array; rgb_XX.png and alpha_XX.png, XX < V, whole PNGs of W x H pixels.
    Raises :class:`CorruptObjectError` (one line: the object, the file, the problem, the fix).
    """
    object_dir = Path(object_dir)
    current = object_dir / CAMERAS_FILE

    def fail(problem: str) -> CorruptObjectError:
        fix = RERENDER.format(folder=object_dir)
        return CorruptObjectError(f"rendered object {object_dir.name!r}: {current} {problem}; {fix}")

    try:
        views = _check_cameras(current)
        current = object_dir / DEPTH_FILE
        shape, dtype = npy_header(current)
        if len(shape) != 3 or shape[0] != views or 0 in shape or dtype.kind not in _NUMERIC or dtype.fields:
            raise ValueError(
                f"holds a {dtype} array of shape {shape}, not ({views}, H, W) numbers for its {views} views"
            )
        height, width = shape[1:]
        for v in range(views):
            for current in (object_dir / rgb_file(v), object_dir / alpha_file(v)):
                if png_size(current) != (width, height):
                    w, h = png_size(current)
                    raise ValueError(f"is {w}x{h} pixels but {DEPTH_FILE} is {width}x{height}")
    except FileNotFoundError:
        raise fail("is missing") from None
    except (IsADirectoryError, NotADirectoryError, PermissionError) as e:
        raise fail(f"cannot be read ({type(e).__name__})") from None
    except ValueError as e:
        raise fail(str(e)) from None
    return views, height, width


def check_ccm(ccm_file: str | Path, shape: tuple[int, int, int]) -> None:
    """Check a ccm.npy's header against its object's (views, height, width): a whole numeric (V, 3, H, W) array."""
    ccm_file = Path(ccm_file)
    views, height, width = shape
    try:
        found, dtype = npy_header(ccm_file)
        if found != (views, 3, height, width) or dtype.kind not in _NUMERIC or dtype.fields:
            raise ValueError(f"holds a {dtype} array of shape {found}, not {(views, 3, height, width)} numbers")
    except (OSError, ValueError) as e:
        problem = "cannot be read" if isinstance(e, OSError) else str(e)
        raise CorruptObjectError(f"CCM of object {ccm_file.parent.name!r}: {ccm_file} {problem}; {RECCM}") from None


def incomplete_objects(split_dir: str | Path) -> list[str]:
    """Sub-folders of a split folder with an object's files (depth, views) but no cameras.json, sorted."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        return []
    return sorted(
        p.name
        for p in split_dir.iterdir()
        if not p.name.startswith(".")
        and p.is_dir()
        and not (p / CAMERAS_FILE).exists()
        and any((p / f).exists() for f in (DEPTH_FILE, rgb_file(0), alpha_file(0)))
    )


def require_complete(split_dir: str | Path) -> None:
    """Raise :class:`CorruptObjectError` for the first object folder of a split that lacks its cameras.json."""
    for object_id in incomplete_objects(split_dir)[:1]:
        folder = Path(split_dir) / object_id
        raise CorruptObjectError(
            f"rendered object {object_id!r}: {folder / CAMERAS_FILE} is missing (the folder has the other files); "
            + RERENDER.format(folder=folder)
        )


def check_split(split_dir: str | Path, object_ids: list[str]) -> dict[str, tuple[int, int, int]]:
    """:func:`check_object` for each object of a split; they must agree on (views, height, width).

    Returns ``{object_id: (views, height, width)}``; raises :class:`CorruptObjectError`.
    """
    split_dir = Path(split_dir)
    shapes = {object_id: check_object(split_dir / object_id) for object_id in object_ids}
    first = object_ids[0] if object_ids else None
    for object_id, shape in shapes.items():
        if shape != shapes[first]:
            (v, h, w), (v0, h0, w0) = shape, shapes[first]
            raise CorruptObjectError(
                f"rendered object {object_id!r}: {split_dir / object_id / DEPTH_FILE} has {v} views of {w}x{h} pixels "
                f"but {first!r} has {v0} of {w0}x{h0}: the split mixes renders of different settings; "
                "re-run the render stage (`dvc repro -f render`)"
            )
    return shapes
