"""Image-to-3D for a user's picture: `ouroboros3d generate`, the pipeline's __call__ and ouroboros3d.inference.generate,
on a tiny model."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, tiny_params, tiny_raw
from PIL import Image

from ouroboros3d.build import build_model
from ouroboros3d.config import params_from_dict, params_from_resolved
from ouroboros3d.errors import GenerationError
from ouroboros3d.gaussians.container import load_ply
from ouroboros3d.inference.cli import main
from ouroboros3d.inference.generate import generate, write_outputs
from ouroboros3d.inference.images import prepare_image, target_fill
from ouroboros3d.inference.options import default_elevation
from ouroboros3d.inference.pipeline import Ouroboros3DPipeline

STEPS = 2
FRAMES = 5


def _write_checkpoint(folder: Path, params, weights_params=None) -> Path:
    """A model folder as experiments/train.py writes it; with ``weights_params``, the components of
    that model beside the params.json of ``params``."""
    torch.manual_seed(0)
    built = weights_params or params
    Ouroboros3DPipeline.from_model(build_model(built), built).save_pretrained(folder)
    if weights_params is not None:
        (folder / "params.json").write_text(json.dumps(dataclasses.asdict(params), indent=2, sort_keys=True))
    return folder


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return _write_checkpoint(tmp_path_factory.mktemp("ckpt"), tiny_params())


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("images")
    rgba = np.zeros((60, 90, 4), np.uint8)
    rgba[10:40, 30:70] = (200, 40, 40, 255)  # a 40 x 30 red box, off-centre
    Image.fromarray(rgba).save(d / "mug.png")
    rgb = np.full((80, 64, 3), 255, np.uint8)
    rgb[30:50, 10:40] = (20, 120, 200)
    Image.fromarray(rgb).save(d / "cup.jpg", quality=85)
    (d / "notes.png").write_text("this is not an image\n")
    Image.new("RGB", (40, 30), (255, 255, 255)).save(d / "white.png")
    Image.new("RGBA", (40, 30), (255, 0, 0, 0)).save(d / "clear.png")
    return {p.stem: p for p in d.iterdir()}


@pytest.fixture(scope="module")
def loaded(ckpt):
    return Ouroboros3DPipeline.from_pretrained(ckpt)


@pytest.fixture(scope="module")
def result(loaded, images):
    return generate(images["mug"], loaded, steps=STEPS, seed=3)


def _expected_gaussians(params) -> int:
    return len(params.model.recon_views) * params.model.reconstructor.splat_size**2


def _check_outputs(out: Path, params) -> dict:
    v, res = params.camera.num_views, params.data.resolution
    names = [f"view_{i:02d}.png" for i in range(v)]
    names += ["input.png", "grid.png", "gaussians.ply", "turntable.gif", "steps.png", "generation.json"]
    for name in names:
        assert (out / name).is_file(), name
    assert not (out / f"view_{v:02d}.png").exists()
    assert Image.open(out / "view_00.png").size == (res, res)
    assert Image.open(out / "input.png").size == (res, res)

    from plyfile import PlyData

    n = _expected_gaussians(params)
    assert PlyData.read(str(out / "gaussians.ply"))["vertex"].count == n
    g = load_ply(out / "gaussians.ply")
    assert g.means.shape == (1, n, 3) and torch.isfinite(g.means).all()

    gif = Image.open(out / "turntable.gif")
    assert gif.n_frames == FRAMES

    record = json.loads((out / "generation.json").read_text())
    assert record["settings"]["steps"] == STEPS
    assert record["settings"]["num_gaussians"] == n
    assert record["settings"]["device"] == "cpu"
    assert record["strip_steps"] == list(range(STEPS))
    assert {"load_checkpoint", "prepare_image", "sample", "turntable", "total"} <= set(record["timings_s"])
    assert all(t >= 0 for t in record["timings_s"].values())
    return record


def test_cli_generate_rgba_end_to_end(ckpt, images, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["generate", str(images["mug"]), "--checkpoint", str(ckpt), "--steps", str(STEPS), "--out", str(out)]
    assert main([*args, "--seed", "7", "--turntable-frames", str(FRAMES)]) == 0
    record = _check_outputs(out, tiny_params())
    s = record["settings"]
    assert s["seed"] == 7 and s["feedback"] is True and s["feedback_start"] == 0.0
    assert s["elevation_deg"] == default_elevation(tiny_params()) == 10.0
    assert s["input"]["mask_from"] == "alpha" and s["input"]["bbox"] == [30, 10, 70, 40]
    assert s["checkpoint"] == str(ckpt)
    assert f"wrote {len(record['files'])} files" in capsys.readouterr().out


def test_installed_command_with_jpeg(ckpt, images, tmp_path):
    """The entry point end to end in a fresh process: RGB JPEG, the model folder, the default out dir."""
    script = Path(sys.executable).parent / "ouroboros3d"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "ouroboros3d.inference.cli"]
    args = ["generate", str(images["cup"]), "--checkpoint", str(ckpt), "--steps", str(STEPS)]
    args += ["--turntable-frames", str(FRAMES), "--elevation", "20", "--no-feedback", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": os.path.dirname(sys.executable)}  # no ffmpeg on this PATH
    proc = subprocess.run(command + args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    record = _check_outputs(tmp_path / "outputs" / "cup", tiny_params())
    s = record["settings"]
    assert s["input"]["mask_from"] == "white background" and s["elevation_deg"] == 20.0
    assert s["feedback"] is False and s["feedback_start"] == 1.0
    assert any("ffmpeg" in note for note in record["notes"])


def test_generate_help_names_the_input_assumptions(capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "near-white background" in out and "--no-feedback" in out and "--elevation" in out


def _bad_checkpoint(tmp_path: Path) -> Path:
    """params.json of the tiny model beside weights of a model built with other sizes."""
    other = params_from_dict(tiny_raw(model={"reconstructor": {"down_channels": [8, 8, 16], "up_channels": [16, 16]}}))
    return _write_checkpoint(tmp_path / "bad", tiny_params(), weights_params=other)


@pytest.mark.parametrize(
    ("image", "checkpoint", "expect"),
    [
        ("notes", None, "not a readable image"),
        ("white", None, "no object found"),
        ("clear", None, "fully transparent"),
        ("missing", None, "image not found"),
        ("mug", "bad", "does not match this model"),
        ("mug", "absent", "checkpoint not found"),
    ],
)
def test_bad_inputs_give_one_line_errors(image, checkpoint, expect, ckpt, images, tmp_path, capsys):
    path = images.get(image, tmp_path / "missing.png")
    ck = {None: ckpt, "bad": None, "absent": tmp_path / "absent"}.get(checkpoint)
    if checkpoint == "bad":
        ck = _bad_checkpoint(tmp_path)
    code = main(["generate", str(path), "--checkpoint", str(ck), "--steps", "1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code != 0
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], err
    assert not (tmp_path / "o").exists()


def test_module_entry_point_error_in_a_fresh_process(images):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ouroboros3d.inference.cli",
            "generate",
            str(images["notes"]),
            "--checkpoint",
            "nowhere",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "checkpoint not found" in proc.stderr


def test_same_seed_same_views(loaded, images, result):
    again = generate(images["mug"], loaded, steps=STEPS, seed=3)
    assert torch.equal(result.views, again.views)
    assert torch.equal(result.gaussians.means, again.gaussians.means)
    other = generate(images["mug"], loaded, steps=STEPS, seed=4)
    assert not torch.equal(result.views, other.views)


def test_calling_the_pipeline_gives_what_generate_gives(loaded, ckpt, images, result):
    """pipe(image, ...) is the entry point: generate with the loaded pipeline, generate with the model
    folder, and a call on an image prepared already all give the same views, Gaussians and settings."""
    params = loaded.params
    called = loaded(images["mug"], steps=STEPS, seed=3)
    from_folder = generate(images["mug"], ckpt, steps=STEPS, seed=3)
    prepared = prepare_image(images["mug"], params.data.resolution, target_fill(params))
    from_prepared = loaded(prepared, steps=STEPS, seed=3)
    for other in (called, from_folder, from_prepared):
        assert torch.equal(result.views, other.views)
        assert torch.equal(result.gaussians.means, other.gaussians.means)
        assert torch.equal(result.recon_rgb, other.recon_rgb)
        assert [r.i for r in other.steps] == [r.i for r in result.steps]
        assert other.settings == result.settings
    assert called.settings.checkpoint == str(ckpt) and called.settings.seed == 3 and called.settings.steps == STEPS
    assert called.timings["load_checkpoint"] == 0.0 < from_folder.timings["load_checkpoint"]
    with pytest.raises(GenerationError, match="prepared image"):
        loaded(prepare_image(images["mug"], 2 * params.data.resolution, 0.6), steps=1)
    with pytest.raises(GenerationError, match="steps must be >= 1"):
        loaded(images["mug"], steps=0)


def test_generation_json_settings_keep_their_keys_and_order(result):
    settings = result.settings.to_json()
    assert list(settings) == [
        "image", "checkpoint", "preset", "device", "seed", "steps", "elevation_deg", "radius", "fov_deg",
        "azimuths_deg", "resolution", "feedback", "feedback_start", "model_feedback_maps", "guidance", "sampler",
        "input", "num_gaussians", "torch", "python",
    ]  # fmt: skip
    assert list(settings["input"]) == ["original_size", "mask_from", "bbox", "fill"]
    assert json.loads(json.dumps(settings))["input"]["bbox"] == [30, 10, 70, 40]


def test_result_shapes_and_steps(result, loaded):
    params = loaded.params
    v, res = params.camera.num_views, params.data.resolution
    assert result.views.shape == (v, 3, res, res) and 0 <= result.views.min() and result.views.max() <= 1
    assert result.recon_rgb.shape == (v, 3, res, res)
    assert result.gaussians.num_gaussians == _expected_gaussians(params)
    assert [r.i for r in result.steps] == list(range(STEPS))
    assert result.steps[0].recon.rgb.device.type == "cpu"
    assert result.K.shape == (v, 3, 3) and result.c2w.shape == (v, 4, 4)
    assert result.azimuths.tolist() == [0.0, 90.0, 180.0, 270.0]


def test_no_feedback_feeds_back_nothing_and_on_step_runs_once_per_step(loaded, images):
    seen = []
    r = generate(images["mug"], loaded, steps=3, seed=0, feedback=False, strip_steps=10, progress=seen.append)
    assert [info["i"] for info in seen] == [0, 1, 2] and all(info["steps"] == 3 for info in seen)
    assert len(r.steps) == 3 and not any(rec.fed_back for rec in r.steps)
    fed = generate(images["mug"], loaded, steps=3, seed=0, strip_steps=10)
    assert [rec.fed_back for rec in fed.steps] == [True, True, False]


def test_write_outputs_uses_ffmpeg_when_on_path(result, tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "ffmpeg"  # writes its last argument, as ffmpeg writes the output file
    fake.write_text(f"#!{sys.executable}\nimport sys\nopen(sys.argv[-1], 'wb').write(b'mp4')\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    files = write_outputs(result, tmp_path / "out", turntable=3)
    assert files["turntable.mp4"].read_bytes() == b"mp4"
    record = json.loads((tmp_path / "out" / "generation.json").read_text())
    assert "turntable.mp4" in record["files"] and not any("ffmpeg" in n for n in record["notes"])
    assert Image.open(files["turntable.gif"]).n_frames == 3


def test_generate_returns_the_mesh_and_write_outputs_writes_it(loaded, images, result, tmp_path):
    import trimesh

    assert result.mesh is None  # no mesh unless asked for
    meshed = generate(images["mug"], loaded, steps=1, seed=3, mesh=True, mesh_resolution=32)
    assert isinstance(meshed.mesh, trimesh.Trimesh) and len(meshed.mesh.faces) > 0
    assert meshed.mesh.visual.vertex_colors.shape == (len(meshed.mesh.vertices), 4)
    assert "mesh" in meshed.timings
    files = write_outputs(meshed, tmp_path / "out", turntable=0)
    assert len(trimesh.load(files["mesh.glb"], force="mesh").faces) == len(meshed.mesh.faces)
    record = json.loads((tmp_path / "out" / "generation.json").read_text())
    assert {"mesh.glb", "mesh.obj"} <= set(record["files"])
    with pytest.raises(GenerationError, match="mesh_resolution"):
        generate(images["mug"], loaded, steps=1, mesh=True, mesh_resolution=2)


def test_target_fill_matches_the_camera():
    params = params_from_dict({})
    assert target_fill(params) == pytest.approx(1 / (2 * 2.2 * math.tan(math.radians(19.8))))
    assert 0.62 < target_fill(params) < 0.64  # the training renders' masks: median 0.63


def test_prepare_image_crops_centres_and_scales():
    rgba = np.zeros((200, 300, 4), np.uint8)
    rgba[20:100, 200:260] = (10, 200, 10, 255)  # 60 wide, 80 tall, far from the centre
    prepared = prepare_image(Image.fromarray(rgba), resolution=64, fill=0.5)
    img = prepared.tensor
    assert img.shape == (3, 64, 64)
    obj = (img.min(0).values < 0.5).nonzero()
    top, left = obj.min(0).values.tolist()
    bottom, right = (obj.max(0).values + 1).tolist()
    assert bottom - top == pytest.approx(32, abs=1)  # the longer side fills half the frame
    assert right - left == pytest.approx(24, abs=1)
    assert (top + bottom) / 2 == pytest.approx(32, abs=1) and (left + right) / 2 == pytest.approx(32, abs=1)
    assert img[:, 0, 0].tolist() == [1.0, 1.0, 1.0]  # composited on white


def test_prepare_image_ignores_jpeg_noise_on_white(tmp_path):
    rng = np.random.default_rng(0)
    rgb = np.clip(255 - rng.integers(0, 8, (120, 120, 3)), 0, 255).astype(np.uint8)
    rgb[50:70, 40:80] = (90, 60, 30)
    rgb[5, 5] = (0, 0, 0)  # a speck of dust
    Image.fromarray(rgb).save(tmp_path / "photo.jpg", quality=80)
    prepared = prepare_image(tmp_path / "photo.jpg", resolution=32, fill=0.6)
    left, top, right, bottom = prepared.bbox
    assert abs(left - 40) <= 2 and abs(top - 50) <= 2 and abs(right - 80) <= 2 and abs(bottom - 70) <= 2
    assert prepared.mask_from == "white background"
    assert prepared.tensor[:, 0, 0].min() > 0.99  # the noisy background became white


def test_prepare_image_rejects_empty():
    with pytest.raises(GenerationError, match="no object"):
        prepare_image(np.ones((20, 20, 3)), resolution=16, fill=0.6)


@pytest.mark.parametrize("preset", ["cpu-small", "gpu-medium"])
def test_params_json_round_trips(preset):
    import yaml

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = params_from_dict({**raw, "preset": preset})
    restored = params_from_resolved(json.loads(json.dumps(dataclasses.asdict(params))))
    # a trained model is one model: the params' ablation variants are not part of it
    assert restored == dataclasses.replace(params, variants={}, train_variants=())


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    arr = np.full((64, 64), 65535, dtype=np.uint16)
    arr[16:48, 16:48] = 32768  # a mid-grey object on white, 16 bits
    Image.fromarray(arr).save(tmp_path / "grey16.png")
    prepared = prepare_image(tmp_path / "grey16.png", 32, 0.63)
    centre = prepared.tensor[:, 16, 16]
    assert torch.allclose(centre, torch.full((3,), 128 / 255), atol=2 / 255)


@pytest.mark.parametrize(
    ("image_size", "object_size", "warns"),
    [((400, 300), (3, 3), True), ((1, 1), (1, 1), True), ((12, 12), (10, 10), True), ((400, 300), (60, 40), False)],
    ids=["3-px object in a large image", "1x1 image", "tiny image", "normal object"],
)
def test_small_objects_and_tiny_images_warn(image_size, object_size, warns):
    import warnings

    (width, height), (w, h) = image_size, object_size
    rgb = np.full((height, width, 3), 255, np.uint8)
    top, left = (height - h) // 2, (width - w) // 2
    rgb[top : top + h, left : left + w] = (20, 120, 200)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepare_image(rgb, 32, 0.63)
    messages = [str(m.message) for m in caught if "almost no detail" in str(m.message)]
    assert len(messages) == int(warns), messages
    if warns:
        assert f"covers only {w}x{h} pixels of the {width}x{height} image" in messages[0]
