"""`ouroboros3d generate` never goes wrong silently: broken weights, bad options and oversized images stop
before any work with exactly one `error:` line (exit 2, nothing written); two runs into one folder never
mix their files; --skip-existing trusts only a complete, intact folder; the crop keeps thin parts.

Runs on a tiny model (tests/conftest.py); the two-process test starts fresh interpreters.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CHILD_ENV, tiny_params
from PIL import Image
from safetensors.torch import load_file, save_file

from ouroboros3d.build import build_model
from ouroboros3d.errors import GenerationError
from ouroboros3d.files import TMP_PREFIX, WEIGHTS_NAME
from ouroboros3d.inference import output_folder
from ouroboros3d.inference.cli import is_finished, main
from ouroboros3d.inference.exports import write_outputs
from ouroboros3d.inference.images import prepare_image
from ouroboros3d.inference.output_folder import ConcurrentWriteError, is_complete
from ouroboros3d.inference.pipeline import COMPONENTS, Ouroboros3DPipeline

FAST = ["--steps", "1", "--turntable-frames", "2", "--strip-steps", "1"]


def _png_claiming(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height pixels (Pillow checks the size when it opens the file)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    chunk = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])  # after the 8-byte signature + length
    data[12:29] = chunk
    data[29:33] = struct.pack(">I", zlib.crc32(chunk))
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A tiny checkpoint, good and bad images, a file, a folder of someone's files, one finished output."""
    torch.set_num_threads(1)
    ws = tmp_path_factory.mktemp("ws")
    params = tiny_params()
    torch.manual_seed(0)
    Ouroboros3DPipeline.from_model(build_model(params), params).save_pretrained(ws / "ckpt")
    rgba = np.zeros((48, 64, 4), np.uint8)
    rgba[10:40, 20:50] = (200, 40, 40, 255)
    Image.fromarray(rgba).save(ws / "mug.png")
    tiny = np.full((300, 400, 3), 255, np.uint8)
    tiny[150:153, 200:203] = (20, 120, 200)  # a 3-px object: prepare_image warns
    Image.fromarray(tiny).save(ws / "tiny.png")
    _png_claiming(ws / "bomb.png", 10_000, 10_000)  # 100 Mpixels: above Pillow's MAX_IMAGE_PIXELS (89.5 M)
    _png_claiming(ws / "huge.png", 20_000, 20_000)  # above twice that: Pillow's DecompressionBombError
    (ws / "afile").write_text("not a folder\n")
    (ws / "theirs").mkdir()
    (ws / "theirs" / "notes.txt").write_text("someone's file\n")
    (ws / "theirs" / "mug").mkdir()  # a batch's <out>/<stem> folder holding someone's files
    (ws / "theirs" / "mug" / "notes.txt").write_text("someone's file\n")
    argv = ["generate", str(ws / "mug.png"), "--checkpoint", str(ws / "ckpt"), "--out", str(ws / "done"), *FAST]
    assert main(argv) == 0
    return ws


@pytest.fixture(scope="module")
def done(workspace) -> Path:
    return workspace / "done"


def _poisoned(src: Path, dst: Path, component: str, value: float) -> str:
    """A copy of the checkpoint ``src`` whose ``component`` has one ``value`` in a tensor; returns its key."""
    shutil.copytree(src, dst)
    path = dst / component / WEIGHTS_NAME
    state = load_file(str(path))
    keys = sorted(k for k, t in state.items() if t.is_floating_point())
    key = keys[len(keys) // 2]
    tensor = state[key].clone()
    tensor.view(-1)[tensor.numel() // 2] = value
    state[key] = tensor
    save_file(state, str(path), metadata={"format": "pt"})
    return key


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def _one_error_line(capfd, code: int, expect: str) -> str:
    err = capfd.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and "Warning" not in err
    assert expect in lines[0], lines[0]
    return lines[0]


# --- every bad option, refused up front -------------------------------------------------------

OPTIONS = [  # (option, bad values, a phrase of the error line)
    ("--seed", ["1e23", "-1", "-5", str(2**64), str(10**23), "1.5", "abc"], "--seed"),
    ("--mesh-resolution", ["100000", "513", "3", "-1"], "--mesh-resolution"),
    ("--steps", ["0", "-3", "1001", "1000000000"], "--steps"),
    ("--turntable-frames", ["-1", "100000"], "--turntable-frames"),
    ("--strip-steps", ["-1"], "--strip-steps"),
    ("--elevation", ["nan", "inf", "-inf", "90", "-95"], "--elevation"),
]
OPTION_CASES = [
    pytest.param(option, value, expect, id=f"{option} {value}")
    for option, values, expect in OPTIONS
    for value in values
]
OUT_CASES = [  # --out naming what cannot take a generation's folder
    pytest.param("afile", "is not a folder", id="--out an existing file"),
    pytest.param("afile/sub", "afile is not a folder", id="--out under a file"),
    pytest.param("theirs", "not a generation's outputs", id="--out a folder of other files"),  # and theirs/mug/
]


def _run_bad(workspace, tmp_path, capfd, argv: list[str], expect: str, out: Path) -> None:
    before = _snapshot(workspace)
    capfd.readouterr()
    code = main(argv)
    _one_error_line(capfd, code, expect)
    assert _snapshot(workspace) == before  # nothing written, not even a temporary file
    assert not list(tmp_path.iterdir())  # (where an --out of the table lies: the workspace, unchanged)


@pytest.mark.parametrize(("option", "value", "expect"), OPTION_CASES)
def test_bad_option_is_refused_before_the_model_loads(option, value, expect, workspace, tmp_path, capfd, monkeypatch):
    loads = []
    monkeypatch.setattr(Ouroboros3DPipeline, "from_pretrained", classmethod(lambda *a, **k: loads.append(a) or 1 / 0))
    out = tmp_path / "out"
    argv = ["generate", str(workspace / "mug.png"), "--checkpoint", str(workspace / "ckpt"), "--out", str(out)]
    _run_bad(workspace, tmp_path, capfd, [*argv, "--mesh", f"{option}={value}"], expect, out)
    assert loads == []


@pytest.mark.parametrize(("out", "expect"), OUT_CASES)
def test_bad_out_is_refused_before_the_model_loads(out, expect, workspace, tmp_path, capfd, monkeypatch):
    monkeypatch.setattr(Ouroboros3DPipeline, "from_pretrained", classmethod(lambda *a, **k: 1 / 0))
    target = workspace / out
    for images in (["mug.png"], ["mug.png", "tiny.png"]):  # one image (--out is its folder) and a batch
        argv = ["generate", *(str(workspace / i) for i in images), "--checkpoint", str(workspace / "ckpt")]
        _run_bad(workspace, tmp_path, capfd, [*argv, "--out", str(target), *FAST], expect, target)


# --- broken weights, oversized images: one line ------------------------------------------------

BROKEN = [
    pytest.param(component, value, id=f"{component} {value}")
    for component in COMPONENTS
    for value in (float("nan"), float("inf"), float("-inf"))
]


@pytest.mark.parametrize(("component", "value"), BROKEN)
def test_non_finite_weights_are_refused_when_they_load(component, value, workspace, tmp_path, capfd):
    ckpt = tmp_path / "ckpt"
    key = _poisoned(workspace / "ckpt", ckpt, component, value)
    before = _snapshot(ckpt)
    out = tmp_path / "out"
    capfd.readouterr()
    code = main(["generate", str(workspace / "mug.png"), "--checkpoint", str(ckpt), "--out", str(out), *FAST])
    line = _one_error_line(capfd, code, f"tensor {key!r} holds non-finite values")
    assert f"{component} (" in line and ("1 NaN" if value != value else "1 inf") in line
    assert not out.exists() and _snapshot(ckpt) == before
    with pytest.raises(GenerationError, match="non-finite"):
        Ouroboros3DPipeline.from_pretrained(ckpt)


@pytest.mark.parametrize(
    ("image", "checkpoint", "expect"),
    [
        ("bomb", "ckpt", "too large to read safely"),  # Pillow's DecompressionBombWarning, as an error
        ("huge", "ckpt", "too large to read safely"),  # Pillow's DecompressionBombError
        ("tiny", "poisoned", "non-finite"),  # a warned-about image, then a failure: the warning is not shown
    ],
)
def test_only_the_error_line_reaches_stderr(image, checkpoint, expect, workspace, tmp_path, capfd):
    ckpt = workspace / "ckpt"
    if checkpoint == "poisoned":
        ckpt = tmp_path / "poisoned"
        _poisoned(workspace / "ckpt", ckpt, "reconstructor", float("nan"))
    out = tmp_path / "out"
    before = _snapshot(workspace)
    capfd.readouterr()
    code = main(["generate", str(workspace / f"{image}.png"), "--checkpoint", str(ckpt), "--out", str(out), *FAST])
    _one_error_line(capfd, code, expect)
    assert not out.exists() and _snapshot(workspace) == before


def test_non_finite_samples_are_an_error_not_black_views(workspace, tmp_path):
    pipe = Ouroboros3DPipeline.from_pretrained(workspace / "ckpt")
    with torch.no_grad():
        next(pipe.denoiser.parameters()).fill_(float("nan"))  # weights that went bad after loading
    with pytest.raises(GenerationError, match="NaN or infinite"):
        pipe(workspace / "mug.png", steps=1)


# --- the crop keeps thin parts, drops specks ----------------------------------------------------


def _cup(h: int, w: int, t: int) -> np.ndarray:
    """A body with a thin ring handle on its right, sticking out of the body's box."""
    m = np.zeros((h, w), bool)
    top, bottom, left, right = int(0.3 * h), int(0.8 * h), int(0.3 * w), int(0.55 * w)
    m[top:bottom, left:right] = True
    r0, r1, c1 = int(0.4 * h), int(0.65 * h), right + max(3, int(0.15 * w))
    m[r0 : r0 + t, right:c1] = m[r1 - t : r1, right:c1] = True
    m[r0:r1, c1 - t : c1] = True
    return m


def _table(h: int, w: int, t: int) -> np.ndarray:
    """A top on thin legs, which reach far below it."""
    m = np.zeros((h, w), bool)
    top, left, right = int(0.3 * h), int(0.2 * w), int(0.8 * w)
    m[top : top + max(4, int(0.12 * h)), left:right] = True
    for c in (left + 1, right - 1 - t):
        m[top : int(0.9 * h), c : c + t] = True
    return m


def _flower(h: int, w: int, t: int) -> np.ndarray:
    """A round head on a thin stem, with a thin diagonal leaf (8-connected only)."""
    m = np.zeros((h, w), bool)
    yy, xx = np.mgrid[:h, :w]
    cy, cx, r = int(0.3 * h), w // 2, max(3, int(0.12 * min(h, w)))
    m[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = True
    m[cy : int(0.95 * h), cx : cx + t] = True
    y0, n = int(0.6 * h), int(0.3 * min(h, w))
    for i in range(n):
        m[y0 + i, cx - 1 - i : cx - 1 - i + t] = True
    return m


SHAPES = {"cup handle": _cup, "table legs": _table, "flower stem": _flower}
THIN_CASES = [
    pytest.param(shape, size, thick, source, id=f"{shape} {size[0]}x{size[1]} {thick}px {source}")
    for shape in SHAPES
    for size, thick in (((32, 32), 1), ((32, 32), 2), ((1200, 900), 1), ((1200, 900), 2))
    for source in ("alpha", "white")
]


@pytest.mark.parametrize(("shape", "size", "thick", "source"), THIN_CASES)
def test_crop_keeps_thin_parts_and_drops_a_speck(shape, size, thick, source):
    w, h = size
    obj = SHAPES[shape](h, w, thick)
    speck = (1, w - 2)  # a lone pixel in a far corner
    assert not obj[: speck[0] + 2, speck[1] - 1 :].any()
    mask = obj.copy()
    mask[speck] = True
    colour = np.array([40, 60, 90], np.uint8)
    if source == "alpha":
        image = np.zeros((h, w, 4), np.uint8)
        image[mask] = (*colour, 255)
    else:
        image = np.full((h, w, 3), 255, np.uint8)
        image[mask] = colour
    prepared = prepare_image(image, 32, 0.63)
    left, top, right, bottom = prepared.bbox
    rows, cols = np.nonzero(obj)
    # every pixel of the object lies inside the crop, which is the object's own box: the speck is ignored
    assert (left, top, right, bottom) == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
    assert not (left <= speck[1] < right and top <= speck[0] < bottom)


# --- two writers, leftovers, --skip-existing ----------------------------------------------------


def _consistent(out: Path) -> dict:
    """The folder is one run's complete output: its record lists exactly the files there, checksums matching."""
    record = json.loads((out / "generation.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == sorted(record["files"])
    assert is_complete(out)
    return record


def test_two_processes_into_one_folder_leave_one_runs_output(workspace, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, **CHILD_ENV, "PATH": os.path.dirname(sys.executable)}  # no ffmpeg: faster, the same
    base = [sys.executable, "-m", "ouroboros3d.inference.cli", "generate", str(workspace / "mug.png")]
    base += ["--checkpoint", str(workspace / "ckpt"), "--out", str(out), "--quiet", *FAST]
    procs = [
        subprocess.Popen(
            [*base, "--seed", str(seed)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for seed in (11, 22)
    ]
    errs = [p.communicate(timeout=240)[1] for p in procs]
    results = [(p.returncode, err) for p, err in zip(procs, errs, strict=True)]
    codes = [code for code, _ in results]
    assert 0 in codes, results
    for code, err in results:
        assert "Traceback" not in err, err
        if code != 0:  # the one that finished second was refused, in one line
            assert code == 2 and err.strip().splitlines() == [err.strip()] and "another run wrote" in err, err
    record = _consistent(out)
    seeds = {11, 22} if codes == [0, 0] else {(11, 22)[codes.index(0)]}
    assert record["settings"]["seed"] in seeds
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left beside it


def test_overlapping_write_phases_never_mix(workspace, tmp_path, monkeypatch):
    pipe = Ouroboros3DPipeline.from_pretrained(workspace / "ckpt")
    results = [pipe(workspace / "mug.png", steps=1, seed=seed, strip_steps=1) for seed in (1, 2)]
    out = tmp_path / "out"
    barrier = threading.Barrier(2)
    real_commit = output_folder._commit

    def commit_together(staged, final, expect):
        barrier.wait(timeout=60)  # both runs have written all their files: their commits race
        real_commit(staged, final, expect)

    monkeypatch.setattr(output_folder, "_commit", commit_together)
    outcome = {}

    def run(i):
        try:
            outcome[i] = write_outputs(results[i], out, turntable=2, mp4=False)
        except ConcurrentWriteError as e:
            outcome[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    refused = [i for i in range(2) if isinstance(outcome[i], ConcurrentWriteError)]
    assert len(refused) == 1, outcome
    kept = 1 - refused[0]
    assert _consistent(out)["settings"]["seed"] == results[kept].settings.seed
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    # a later run replaces the folder whole: no file of the previous one stays (a stale extra view)
    monkeypatch.setattr(output_folder, "_commit", real_commit)
    (out / "view_09.png").write_bytes((out / "view_00.png").read_bytes())
    write_outputs(results[refused[0]], out, turntable=0, mp4=False)
    record = _consistent(out)
    assert record["settings"]["seed"] == results[refused[0]].settings.seed and "turntable.gif" not in record["files"]


def _leftover_folder(done: Path, out: Path) -> Path:
    """What an interrupted run leaves beside ``out``: its temporary folder, complete or not, unlocked and old."""
    leftover = out.parent / f"{TMP_PREFIX}{out.name}-interrupted"
    shutil.copytree(done, leftover)
    old = time.time() - 3600
    os.utime(leftover, (old, old))
    return leftover


@pytest.mark.parametrize("leftover", ["temporary folder beside", "temporary file inside"])
def test_skip_existing_never_trusts_leftovers(leftover, done, workspace, tmp_path, capfd):
    out = tmp_path / "out"
    if leftover == "temporary folder beside":  # interrupted before the rename: --out itself is absent
        stale = _leftover_folder(done, out)
    else:  # a complete folder in which an interrupted write left a temporary file (SIGINT mid-write)
        shutil.copytree(done, out)
        stale = out / f"{TMP_PREFIX}view_00.png.0a1b2c"
        stale.write_bytes(b"\x89PNG half")
    assert not is_finished(out)
    argv = ["generate", str(workspace / "mug.png"), "--checkpoint", str(workspace / "ckpt"), "--out", str(out)]
    capfd.readouterr()
    assert main([*argv, "--skip-existing", *FAST]) == 0
    captured = capfd.readouterr()
    assert "nothing to do" not in captured.out and "wrote" in captured.out, captured
    assert not stale.exists()  # cleaned: the folder was replaced, the old temporary folder removed
    _consistent(out)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    capfd.readouterr()
    assert main([*argv, "--skip-existing", *FAST]) == 0
    assert "nothing to do" in capfd.readouterr().out  # now it is finished


def test_skip_existing_needs_a_consistent_record(done, tmp_path):
    assert is_finished(done) and not is_finished(done, mesh=True)
    for damage in ("other content", "missing file", "old record", "no record"):
        out = tmp_path / damage.replace(" ", "_")
        shutil.copytree(done, out)
        record = json.loads((out / "generation.json").read_text())
        if damage == "other content":  # another run's view beside this run's record
            Image.new("RGB", (16, 16), (1, 2, 3)).save(out / "view_01.png")
        elif damage == "missing file":
            (out / "grid.png").unlink()
        elif damage == "old record":  # written by an earlier version: no checksums to check the files against
            del record["sha256"]
            (out / "generation.json").write_text(json.dumps(record))
        else:
            (out / "generation.json").unlink()
        assert not is_finished(out), damage
