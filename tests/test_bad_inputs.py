"""Bad inputs, across the `ouroboros3d` command and the stage scripts in experiments/: each must stop
with exit code 2 and exactly one `error:` line on stderr (no traceback), and write nothing.

Every case fails on its input before any training or sampling. The table names, per case,
the command, its arguments (``{name}`` is a path of the workspace below) and a phrase the
error line must contain, so that a case cannot pass by failing for another reason.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, load_script, tiny_params, tiny_raw
from PIL import Image

from ouroboros3d.build import build_model
from ouroboros3d.errors import UserError
from ouroboros3d.inference import cli
from ouroboros3d.inference.pipeline import Ouroboros3DPipeline

SCRIPTS = (
    "resolve_params",
    "render",
    "ccm",
    "train",
    "evaluate",
    "evaluate_window",
    "figures",
    "tables",
    "report",
    "generate_example",
)


def _checkpoint(folder: Path, params, weights_params=None) -> None:
    """A model folder as experiments/train.py writes it; with ``weights_params``, the components of
    that model beside the params.json of ``params``."""
    folder.mkdir()
    torch.manual_seed(0)
    built = weights_params or params
    Ouroboros3DPipeline.from_model(build_model(built), built).save_pretrained(folder)
    if weights_params is not None:
        (folder / "params.json").write_text(json.dumps(dataclasses.asdict(params), indent=2, sort_keys=True))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """Inputs, good and bad, that the cases below name as {file stem} or {folder name}."""
    torch.set_num_threads(1)
    ws = tmp_path_factory.mktemp("ws")

    def params_file(name: str, raw) -> None:
        (ws / f"{name}.yaml").write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))

    params_file("params", tiny_raw())
    params_file("big_resolution", tiny_raw(data={"resolution": "big"}))
    params_file("frames_backwards", tiny_raw(camera={"view_frames": [3, 2]}))
    params_file("unknown_key", tiny_raw(camera={"zoom": 2.0}))
    params_file("negative_steps", tiny_raw(train={"steps": -1}))
    params_file("not_a_mapping", "- just\n- a list\n")
    params_file("broken_yaml", "data: {resolution: [16\n")

    for name in ("empty", "eval", "results", "no_images"):
        (ws / name).mkdir()
    (ws / "no_images" / "notes.txt").write_text("not an image\n")

    rgba = np.zeros((48, 64, 4), np.uint8)
    rgba[10:40, 20:50] = (200, 40, 40, 255)
    Image.fromarray(rgba).save(ws / "mug.png")
    Image.new("RGB", (40, 30), (200, 40, 40)).save(ws / "mug.jpg")  # the same stem as mug.png
    (ws / "notes.png").write_text("this is not an image\n")
    Image.new("RGB", (40, 30), (255, 255, 255)).save(ws / "white.png")
    Image.new("RGBA", (40, 30), (255, 0, 0, 0)).save(ws / "clear.png")
    (ws / "broken").mkdir()
    (ws / "broken" / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")

    params = tiny_params()
    _checkpoint(ws / "ckpt", params)
    _checkpoint(ws / "ckpt_nofb", tiny_params(feedback=False))  # evaluate_window reuses its full run
    other = tiny_params(model={"reconstructor": {"down_channels": [8, 8, 16], "up_channels": [16, 16]}})
    _checkpoint(ws / "ckpt_mismatch", params, weights_params=other)  # params.json of one model, weights of another
    for name, text in (("ckpt_bad_json", "{not json"), ("ckpt_bad_params", json.dumps({"data": "big"}))):
        shutil.copytree(ws / "ckpt", ws / name)
        (ws / name / "params.json").write_text(text)
    shutil.copytree(ws / "ckpt", ws / "ckpt_garbage")
    (ws / "ckpt_garbage" / "denoiser" / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    (ws / "ckpt_old").mkdir()  # the single-file layout of earlier versions
    (ws / "ckpt_old" / "model.safetensors").write_bytes(b"weights")
    shutil.copy(ws / "ckpt" / "params.json", ws / "ckpt_old")

    (ws / "renders" / "obj").mkdir(parents=True)  # one eval object as generate_example reads it
    Image.fromarray(rgba[..., :3]).save(ws / "renders" / "obj" / "rgb_00.png")
    Image.fromarray(rgba[..., 3]).save(ws / "renders" / "obj" / "alpha_00.png")
    return ws


def _no_cuda(case):
    return pytest.param(*case.values, id=case.id, marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA"))


def case(command: str, argv: str, expect: str):
    return pytest.param(command, argv, expect, id=f"{command}: {argv}")


GEN = "generate {%s} --checkpoint {ckpt} --out {out} --steps 1"
EVAL = "--params {ws}/params.yaml --models {ws} --variant ckpt --out {out}"  # models/<variant>: the tiny ckpt
CASES = [
    # the command line tool: images
    case("cli", GEN % "notes", "not a readable image"),
    case("cli", GEN % "white", "no object found"),
    case("cli", GEN % "clear", "fully transparent"),
    case("cli", "generate {ws}/missing.png --checkpoint {ckpt} --out {out}", "image not found"),
    case("cli", "generate {empty} --checkpoint {ckpt} --out {out}", "no PNG/JPEG images in folder"),
    case("cli", "generate {no_images} --checkpoint {ckpt} --out {out}", "no PNG/JPEG images in folder"),
    case("cli", "generate {ws}/*.webp --checkpoint {ckpt} --out {out}", "no PNG/JPEG images in pattern"),
    case("cli", "generate {broken} --checkpoint {ckpt} --out {out}", "photo.png: "),  # the only image fails
    case("cli", "generate {mug} {ws}/mug.jpg --checkpoint {ckpt} --out {out}", "would both write to"),
    # the command line tool: checkpoints
    case("cli", "generate {mug} --checkpoint {ws}/nowhere --out {out}", "checkpoint not found"),
    case("cli", "generate {mug} --checkpoint {ws}/nowhere/model.safetensors --out {out}", "checkpoint not found"),
    case("cli", "generate {mug} --checkpoint {empty} --out {out}", "checkpoint not found"),
    case("cli", GEN.replace("{ckpt}", "{ckpt_bad_json}") % "mug", "is not valid JSON"),
    case("cli", GEN.replace("{ckpt}", "{ckpt_bad_params}") % "mug", "params.json"),
    case("cli", GEN.replace("{ckpt}", "{ckpt_mismatch}") % "mug", "does not match this model"),
    case("cli", GEN.replace("{ckpt}", "{ckpt_garbage}") % "mug", "cannot read weights"),
    case("cli", GEN.replace("{ckpt}", "{ckpt_old}") % "mug", "old single-file layout"),
    _no_cuda(case("cli", GEN % "mug" + " --device cuda", "CUDA is not available")),
    # the command line tool: options
    case("cli", "generate {mug} --checkpoint {ckpt} --out {out} --steps 0", "--steps must be >= 1"),
    case("cli", "generate {mug} --checkpoint {ckpt} --out {out} --turntable-frames -1", "--turntable-frames"),
    case("cli", "generate {mug} --checkpoint {ckpt} --out {out} --elevation 90", "--elevation must lie in"),
    case("cli", "generate {mug} --checkpoint {ckpt} --out {out} --mesh --mesh-resolution 2", "--mesh-resolution"),
    # render stage: params
    case("resolve_params", "--params {ws}/missing.yaml --out {out}/resolved.yaml", "params file not found"),
    case("resolve_params", "--params {ws}/big_resolution.yaml --out {out}/resolved.yaml", "data.resolution"),
    case("resolve_params", "--params {ws}/unknown_key.yaml --out {out}/resolved.yaml", "zoom"),
    case("render", "--params {ws}/big_resolution.yaml --out {out}", "data.resolution"),
    case("render", "--params {ws}/frames_backwards.yaml --out {out}", "view_frames"),
    case("render", "--params {ws}/unknown_key.yaml --out {out}", "zoom"),
    case("render", "--params {ws}/missing.yaml --out {out}", "params file not found"),
    case("render", "--params {ws}/broken_yaml.yaml --out {out}", "not valid YAML"),
    case("render", "--params {ws}/not_a_mapping.yaml --out {out}", "must be a mapping"),
    # ccm stage
    case("ccm", "--params {ws}/params.yaml --renders {empty} --out {out} --figures {out}/fig", "run the render stage"),
    case("ccm", "--params {ws}/frames_backwards.yaml --renders {empty} --out {out}", "view_frames"),
    # train stage: fails on its inputs before building the model
    case("train", "--params {ws}/params.yaml --data {empty}", "no rendered objects"),
    case("train", "--params {ws}/params.yaml --pretrain denoiser --data {empty}", "no rendered objects"),
    case("train", "--params {ws}/params.yaml --variant nonsense --data {empty}", "unknown variant"),
    case("train", "--pretrain reconstructor --init-denoiser {ws} --data {empty}", "trains G alone"),
    case("train", "--params {ws}/negative_steps.yaml --data {empty}", "train.steps"),
    case("train", "--params {ws}/missing.yaml --data {empty}", "params file not found"),
    # evaluate stage
    case("evaluate", "--params {ws}/params.yaml --models {ws}/models --out {out}", "checkpoint not found"),
    case("evaluate", EVAL + " --data {empty}", "no rendered objects"),  # the model loads, the data is missing
    case("evaluate", EVAL + " --feedback-start 2", "--feedback-start must lie in [0, 1]"),
    case("evaluate", EVAL.replace("params.yaml", "unknown_key.yaml"), "zoom"),
    # evaluate_window stage: a model with feedback is passed on to evaluate.py (a child process)
    case(
        "evaluate_window",
        "--models {ws}/nowhere --variant ckpt --feedback-start 0.4 --out {out}",
        "checkpoint not found",
    ),
    case("evaluate_window", EVAL.replace("params.yaml", "unknown_key.yaml") + " --feedback-start 0.4", "zoom"),
    case(
        "evaluate_window",
        "--models {ws} --variant ckpt_nofb --feedback-start 0.4 --same-as {ws}/no_eval --out {out}",
        "run the `evaluate` stage first",
    ),
    # figures, tables, report
    case("figures", "--eval {eval} --train {empty} --out {out}", "lacks"),
    case("figures", "--eval {ws}/no_eval --train {empty} --out {out}", "lacks"),
    case("figures", "--eval {eval} --runs no-label --out {out}", "label=folder"),
    case("tables", "--params {ws}/params.yaml --eval {ws}/no_eval --out {out}", "no_eval"),
    case("tables", "--params {ws}/big_resolution.yaml --eval {eval} --out {out}", "data.resolution"),
    case("report", "--params {ws}/params.yaml --results {ws}/no_results {template} --out {out}/report.md", "no_"),
    case("report", "--params {ws}/params.yaml --template {ws}/missing.md --out {out}/report.md", "missing.md"),
    case("report", "--params {ws}/missing.yaml --out {out}/report.md", "params file not found"),
    # generate_example stage
    case("generate_example", "--renders {ws}/no_renders --out {out}/example.png --work {out}/w", "no_renders"),
    case(
        "generate_example",
        "--renders {ws}/renders --object obj --checkpoint {ws}/nowhere --out {out}/example.png --work {out}/w",
        "checkpoint not found",
    ),
]


@pytest.fixture(scope="module")
def scripts() -> dict:
    return {name: load_script(name) for name in SCRIPTS}


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(("command", "argv", "expect"), CASES)
def test_bad_input_stops_with_one_error_line_and_writes_nothing(
    command, argv, expect, workspace, scripts, tmp_path, capfd, monkeypatch
):
    monkeypatch.chdir(workspace)  # a stage's default relative outputs would land here too
    out = tmp_path / "out"  # each case's own: one that writes cannot spoil the others
    names = {p.name: p for p in workspace.iterdir() if p.is_dir()} | {p.stem: p for p in workspace.glob("*.png")}
    template = f"--template {ROOT / 'paper' / 'report_template.md'}"  # the real one: cwd is the workspace
    args = argv.format(ws=workspace, out=out, template=template, **names).split()
    main = cli.main if command == "cli" else scripts[command].main
    before = _files(workspace)
    capfd.readouterr()
    code = main(args)
    err = capfd.readouterr().err  # at the file descriptor: a child process's stderr too
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert expect in lines[0], lines[0]
    assert _files(workspace) == before  # nothing written, not even a temporary file
    assert not out.exists()


def test_the_table_covers_every_stage_and_many_inputs():
    commands = [c.values[0] for c in CASES]
    assert len(commands) >= 25 and {"cli", *SCRIPTS} <= set(commands)


@pytest.mark.parametrize(
    ("command", "argv"),
    [("cli", GEN % "notes"), ("render", "--params {ws}/big_resolution.yaml --out {out}")],
    ids=["cli", "render"],
)
def test_debug_re_raises_what_is_otherwise_one_error_line(command, argv, workspace, scripts, tmp_path, capfd):
    names = {p.name: p for p in workspace.iterdir() if p.is_dir()} | {p.stem: p for p in workspace.glob("*.png")}
    args = argv.format(ws=workspace, out=tmp_path / "out", **names).split()
    main = cli.main if command == "cli" else scripts[command].main
    capfd.readouterr()
    assert main(args) == 2
    err = capfd.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err
    with pytest.raises(UserError) as raised:  # the guard lets the error through, traceback and all
        main([*args, "--debug"])
    assert f"error: {' '.join(str(raised.value).split())}" == err.strip()  # the same error


def test_debug_prints_the_traceback_in_a_fresh_process(workspace):
    argv = ["generate", str(workspace / "notes.png"), "--checkpoint", str(workspace / "ckpt"), "--debug"]
    proc = subprocess.run(
        [sys.executable, "-m", "ouroboros3d.inference.cli", *argv], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1  # an uncaught exception, as Python ends on one
    assert proc.stderr.startswith("Traceback (most recent call last):")
    assert "GenerationError: " in proc.stderr and "not a readable image" in proc.stderr
