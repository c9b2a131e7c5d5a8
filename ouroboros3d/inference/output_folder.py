"""One output folder, written whole: a generation's files go into a temporary folder beside it, which
is then renamed into place in one step (:func:`write_folder`); :func:`is_complete` tells a finished,
intact folder from the rest, and two runs into one folder never mix.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no locks, and leftovers are not removed
    fcntl = None

from ..errors import GenerationError, one_line
from ..files import TMP_PREFIX, file_sha256

__all__ = [
    "RECORD_FILE",
    "ConcurrentWriteError",
    "check_output_folder",
    "folder_state",
    "is_complete",
    "remove_leftovers",
    "write_folder",
]

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
WHEN_WRITING = object()  # write_folder's default ``expect``: the folder's state when the write begins


def write_folder(
    out_dir: str | Path, write: Callable[[Path], list[str]], expect: FolderState | object | None = WHEN_WRITING
) -> list[str]:
    """Fill a new temporary folder beside ``out_dir`` by ``write(folder)`` (which returns the names it
    wrote), then rename it to ``out_dir`` in one step, replacing a previous generation's folder there;
    returns the names.

    A reader sees the old outputs or the new ones, whole, never a mix, and an interrupted run leaves
    only its temporary folder (``.tmp-<name>-*``, removed by a later run). A folder holding anything
    but a generation's files is never replaced (:func:`check_output_folder`). ``expect`` is the state
    of ``out_dir`` (:func:`folder_state`) when the run began: if another run has written ``out_dir``
    since, this one's files are dropped with a :class:`ConcurrentWriteError` and the other's kept.
    """
    target = Path(os.path.abspath(out_dir))  # "." or "a/..": a folder with a name, in a parent
    if target.is_symlink():
        target = target.resolve()  # replace what the link points to, not the link
    check_output_folder(target)
    if expect is WHEN_WRITING:
        expect = folder_state(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _staging_folder(target) as staged:
        names = write(staged)
        _commit(staged, target, expect)
    remove_leftovers(target)
    return names


def folder_state(folder: str | Path) -> FolderState | None:
    """What identifies ``folder``'s current content (None: absent): it changes when a run replaces the
    folder or writes into it. :func:`write_folder` compares it before replacing the folder."""
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
