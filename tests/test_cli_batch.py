"""`ouroboros3d generate` on folders, globs and lists of images, on a tiny model: one model load,
one output folder per image, failures reported per image, --skip-existing and --mesh."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from conftest import tiny_params
from PIL import Image

from ouroboros3d.build import build_model
from ouroboros3d.inference.cli import main
from ouroboros3d.inference.pipeline import Ouroboros3DPipeline

FAST = ["--steps", "1", "--turntable-frames", "2", "--strip-steps", "1"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt")
    params = tiny_params()
    torch.manual_seed(0)
    Ouroboros3DPipeline.from_model(build_model(params), params).save_pretrained(folder)
    return folder


def _box(path: Path, colour=(200, 40, 40)) -> Path:
    rgba = np.zeros((48, 64, 4), np.uint8)
    rgba[10:40, 20:50] = (*colour, 255)
    Image.fromarray(rgba).save(path)
    return path


@pytest.fixture
def photos(tmp_path) -> Path:
    """Two good images, a PNG that is not an image, and a text file that is not a PNG/JPEG at all."""
    d = tmp_path / "photos"
    d.mkdir()
    _box(d / "mug.png")
    rgb = np.full((40, 40, 3), 255, np.uint8)
    rgb[10:30, 10:30] = (20, 120, 200)
    Image.fromarray(rgb).save(d / "cup.JPG", quality=90)
    (d / "broken.png").write_text("not an image\n")
    (d / "readme.txt").write_text("ignored\n")
    return d


@pytest.fixture
def loads(monkeypatch) -> list[str]:
    """Records every model load (Ouroboros3DPipeline.from_pretrained)."""
    calls = []
    real = Ouroboros3DPipeline.from_pretrained

    def counting(cls, checkpoint, device="cpu"):
        calls.append(str(checkpoint))
        return real(checkpoint, device=device)

    monkeypatch.setattr(Ouroboros3DPipeline, "from_pretrained", classmethod(counting))
    return calls


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_folder_runs_every_image_once_and_reports_the_bad_one(photos, ckpt, tmp_path, capsys, loads):
    out = tmp_path / "out"
    code = main(["generate", str(photos), "--checkpoint", str(ckpt), "--out", str(out), *FAST])
    captured = capsys.readouterr()
    assert code == 1  # some failed, the others were written
    assert loads == [str(ckpt)]  # the model loaded once for both images
    assert _errors(captured.err) == [_errors(captured.err)[0]] and "Traceback" not in captured.err
    assert _errors(captured.err)[0].startswith(f"error: {photos / 'broken.png'}: ")
    assert "not a readable image" in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["cup", "mug"]  # nothing for broken.png or readme.txt
    for stem in ("cup", "mug"):
        record = json.loads((out / stem / "generation.json").read_text())
        assert Path(record["settings"]["image"]).stem == stem and record["settings"]["steps"] == 1
        assert all((out / stem / name).is_file() for name in record["files"])
    assert "2 of 3 images done" in captured.out and "1 failed" in captured.out


def test_skip_existing_skips_finished_folders_only(photos, ckpt, tmp_path, capsys, loads):
    (photos / "broken.png").unlink()
    out = tmp_path / "out"
    args = ["generate", str(photos), "--checkpoint", str(ckpt), "--out", str(out), *FAST]
    assert main(args) == 0
    finished = (out / "mug" / "generation.json").stat().st_mtime_ns
    (out / "cup" / "grid.png").unlink()  # an interrupted or damaged run: not finished
    capsys.readouterr()
    assert main([*args, "--skip-existing"]) == 0
    assert (out / "mug" / "generation.json").stat().st_mtime_ns == finished  # skipped
    assert (out / "cup" / "grid.png").is_file()  # redone
    summary = capsys.readouterr().out
    assert "1 of 2 images done" in summary and "(1 skipped, 0 failed)" in summary
    loads.clear()
    assert main([*args, "--skip-existing"]) == 0
    assert loads == []  # all finished: the model is not even loaded
    assert "nothing to do" in capsys.readouterr().out


def test_glob_and_list_pick_images_and_mesh_is_written(photos, ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["generate", str(photos / "*.JPG"), "--checkpoint", str(ckpt), "--out", str(out), "--mesh", *FAST])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["cup"]  # the pattern matched the JPEG only
    mesh = trimesh.load(out / "cup" / "mesh.glb", force="mesh")
    assert len(mesh.faces) > 0 and mesh.visual.vertex_colors.shape == (len(mesh.vertices), 4)
    assert (out / "cup" / "mesh.obj").is_file()
    record = json.loads((out / "cup" / "generation.json").read_text())
    assert "mesh" in record["timings_s"]
    # --skip-existing with --mesh redoes a folder finished without a mesh
    (out / "cup" / "mesh.obj").unlink()
    before = (out / "cup" / "generation.json").stat().st_mtime_ns
    images = [str(photos / "cup.JPG"), str(photos / "mug.png")]
    assert (
        main(["generate", *images, "--checkpoint", str(ckpt), "--out", str(out), "--mesh", "--skip-existing", *FAST])
        == 0
    )
    assert (out / "cup" / "mesh.obj").is_file() and (out / "mug" / "mesh.glb").is_file()
    assert (out / "cup" / "generation.json").stat().st_mtime_ns != before


def test_all_images_failing_is_exit_2_with_one_line_each(tmp_path, ckpt, capsys, loads):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "a.png").write_text("no")
    Image.new("RGB", (32, 32), (255, 255, 255)).save(d / "b.png")
    code = main(["generate", str(d), "--checkpoint", str(ckpt), "--out", str(tmp_path / "out"), *FAST])
    err = capsys.readouterr().err
    assert code == 2
    assert [line.split(": ")[1] for line in _errors(err)] == [str(d / "a.png"), str(d / "b.png")]
    assert "no object found" in err and "Traceback" not in err
    assert loads == []  # every image failed when read: the model was never loaded
    assert not (tmp_path / "out").exists()
