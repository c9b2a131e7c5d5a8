"""experiments/evaluate.py, tables.py and figures.py end to end on a tiny model and tiny rendered data;
the `variants` params and train.py's --variant."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import trimesh
import yaml
from conftest import load_script, tiny_raw

from ouroboros3d.build import build_model
from ouroboros3d.config import ParamsError, params_from_dict
from ouroboros3d.data.render_stage import render_dataset
from ouroboros3d.evaluation.evaluate import dvc_metrics, run_name
from ouroboros3d.inference.pipeline import Ouroboros3DPipeline

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """Two meshes rendered at 16² into data/renders/eval, a random tiny model, one evaluate run (2 steps)."""
    tmp = tmp_path_factory.mktemp("evaluate")
    meshes = tmp / "meshes"
    meshes.mkdir()
    trimesh.creation.box(extents=(1.0, 0.6, 0.4)).export(meshes / "box.obj")
    trimesh.creation.icosphere(subdivisions=2).export(meshes / "ball.obj")
    raw = tiny_raw(
        data={"eval": {"source": "folder"}, "folder": str(meshes), "workers": 1},
        sample={"steps": 2},
        evaluation={"gt_points": 3000, "step_objects": 1, "batch_size": 2},
    )
    (tmp / "params.yaml").write_text(yaml.safe_dump(raw))
    params = params_from_dict(raw)
    render_dataset(params, tmp / "data" / "renders", splits=("eval",), workers=1, progress=False)
    torch.manual_seed(0)
    Ouroboros3DPipeline.from_model(build_model(params), params).save_pretrained(tmp / "models" / "tiny")
    with pytest.MonkeyPatch.context() as mp:  # no pretrained weights: LPIPS and FID must say "unavailable"
        mp.setenv("TORCH_HOME", str(tmp / "torch"))
        mp.setenv("OUROBOROS3D_CLEANFID_DIR", str(tmp / "cleanfid"))
        argv = ["--params", str(tmp / "params.yaml"), "--models", str(tmp / "models"), "--data", str(tmp / "data")]
        argv += ["--out", str(tmp / "eval"), "--variant", "tiny", "--no-progress"]
        rc = load_script("evaluate").main([*argv, "--metrics-out", str(tmp / "metrics.json")])
    assert rc == 0
    return tmp


def test_evaluate_writes_parseable_results(evaluated):
    run = evaluated / "eval" / "tiny"
    rows = pd.read_csv(run / "per_object.csv")
    assert sorted(rows.object_id) == ["folder-ball", "folder-box"]
    for col in ("mv_psnr", "3d_psnr", "delta_psnr", "mv_ssim", "cd", "fscore@0.05", "oracle_cd", "copy_input_psnr"):
        assert np.isfinite(rows[col]).all(), col
    np.testing.assert_allclose(rows.delta_psnr, rows.mv_psnr - rows["3d_psnr"], rtol=1e-5)
    assert "mv_lpips" not in rows  # unavailable, not a number
    # mesh geometry of the final Gaussians (an untrained G may mesh to nothing: IoU 0, CD NaN)
    assert {"mesh_cd", "mesh_fscore@0.05", "volume_iou"} <= set(rows)
    assert rows["volume_iou"].between(0, 1).all() and rows["mesh_fscore@0.05"].between(0, 1).all()

    report = json.loads((run / "metrics.json").read_text())
    assert report["objects"] == 2 and report["sample"]["steps"] == 2
    assert report["unavailable"]["lpips"]["status"] == "unavailable"
    assert report["fid"]["status"] == "unavailable"
    stats = report["summary"]["3d_psnr"]
    assert stats["n"] == 2 and stats["ci_low"] <= stats["mean"] <= stats["ci_high"]
    assert report["protocol"]["input_view_excluded"] is True

    dvc = json.loads((evaluated / "metrics.json").read_text())
    assert dvc["3d"]["psnr"] == pytest.approx(stats["mean"]) and "fid" not in dvc
    # the mesh geometry beside the depth-point one (a NaN mean, from an empty mesh, is null)
    assert {"mesh_cd", "mesh_fscore@0.05", "volume_iou"} <= set(dvc["mesh"])
    assert dvc["mesh"]["volume_iou"] == pytest.approx(report["summary"]["volume_iou"]["mean"])

    steps = pd.read_csv(run / "steps.csv")
    assert list(steps.step) == [0, 1] and set(steps.object_id) == {"folder-ball"}  # 1 recorded object, 2 steps
    assert np.isfinite(steps["3d_psnr"]).all() and "cd" in steps
    # the last step's reconstruction is the final one
    final = rows.set_index("object_id").loc["folder-ball"]
    assert steps["3d_psnr"].iloc[-1] == pytest.approx(final["3d_psnr"], rel=1e-5)
    with np.load(run / "steps.npz") as npz:
        assert npz["recon_rgb"].shape == (1, 2, 4, 3, 16, 16) and npz["recon_rgb"].dtype == np.uint8
        assert list(npz["object_ids"]) == ["folder-ball"] and len(npz["sigmas"]) == 2


def test_evaluate_is_seeded_per_object(evaluated):
    """Evaluating one object alone gives the numbers it got beside the other object."""
    argv = ["--params", str(evaluated / "params.yaml"), "--models", str(evaluated / "models")]
    argv += ["--data", str(evaluated / "data"), "--out", str(evaluated / "eval"), "--variant", "tiny"]
    argv += ["--max-objects", "1", "--name", "one", "--record-steps", "0", "--no-progress", "--batch-size", "1"]
    assert load_script("evaluate").main(argv) == 0
    alone = pd.read_csv(evaluated / "eval" / "one" / "per_object.csv").set_index("object_id")
    both = pd.read_csv(evaluated / "eval" / "tiny" / "per_object.csv").set_index("object_id")
    for col in ("mv_psnr", "3d_psnr", "cd"):
        assert alone.loc["folder-ball", col] == pytest.approx(both.loc["folder-ball", col], rel=1e-4)


def test_a_window_of_a_model_without_feedback_is_its_full_run(evaluated):
    """evaluate_window.py reuses the full run of a no-feedback model: the same as evaluating the window."""
    params = params_from_dict(yaml.safe_load((evaluated / "params.yaml").read_text()) | {"feedback": False})
    torch.manual_seed(1)
    folder = evaluated / "models" / "nofb"
    Ouroboros3DPipeline.from_model(build_model(params), params).save_pretrained(folder)
    base = ["--params", str(evaluated / "params.yaml"), "--models", str(evaluated / "models")]
    base += ["--data", str(evaluated / "data"), "--out", str(evaluated / "eval"), "--variant", "nofb", "--no-progress"]
    evaluate, window = load_script("evaluate"), load_script("evaluate_window")
    assert evaluate.main([*base, "--name", "nofb"]) == 0
    assert evaluate.main([*base, "--feedback-start", "0.4", "--name", "computed"]) == 0
    same_as = ["--same-as", str(evaluated / "eval" / "nofb")]
    assert window.main([*base, "--feedback-start", "0.4", "--name", "reused", *same_as]) == 0

    computed, reused = evaluated / "eval" / "computed", evaluated / "eval" / "reused"
    pd.testing.assert_frame_equal(pd.read_csv(reused / "per_object.csv"), pd.read_csv(computed / "per_object.csv"))
    assert (reused / "steps.csv").read_bytes() == (computed / "steps.csv").read_bytes()
    with np.load(reused / "steps.npz") as a, np.load(computed / "steps.npz") as b:
        assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
    ra, rb = (json.loads((d / "metrics.json").read_text()) for d in (reused, computed))
    assert ra["summary"] == rb["summary"] and ra["protocol"] == rb["protocol"] and ra["sample"] == rb["sample"]
    assert ra["name"] == "reused" and "reused_from" in ra
    assert "mesh" not in dvc_metrics(rb["summary"], rb["fid"], [0.05])  # windows compute no mesh
    # a model with feedback is evaluated for real
    assert window.main([*base[:-3], "--variant", "tiny", "--feedback-start", "0.5", "--name", "fed", *same_as]) == 0
    assert "reused_from" not in json.loads((evaluated / "eval" / "fed" / "metrics.json").read_text())


def test_run_names_are_the_variant_or_its_feedback_window():
    # the folder names dvc.yaml's evaluate_window stages and experiments/figures.py's defaults expect
    assert run_name("main") == "main"
    assert run_name("main", 0.4) == "main-fs0.4"
    assert run_name("main", 1) == "main-fs1.0"  # an int start names the same folder as the float


def test_evaluate_reports_a_missing_model(evaluated, capsys):
    argv = ["--params", str(evaluated / "params.yaml"), "--models", str(evaluated / "nowhere")]
    assert load_script("evaluate").main(argv) == 2
    assert "model.safetensors" in capsys.readouterr().err


def test_tables_and_figures_from_the_runs(evaluated, tmp_path):
    # pose the tiny run as the main model (feedback at every step) and as its no-feedback window
    runs = tmp_path / "eval"
    for name, start in (("main", 0.0), ("main-fs1.0", 1.0)):
        (runs / name).mkdir(parents=True)
        for f in ("per_object.csv", "steps.csv", "steps.npz"):
            (runs / name / f).write_bytes((evaluated / "eval" / "tiny" / f).read_bytes())
        report = json.loads((evaluated / "eval" / "tiny" / "metrics.json").read_text())
        report |= {"name": name, "variant": "main"}
        report["sample"]["feedback_start"] = start
        (runs / name / "metrics.json").write_text(json.dumps(report))
    params = str(evaluated / "params.yaml")
    assert load_script("tables").main(["--params", params, "--eval", str(runs), "--out", str(tmp_path / "tables")]) == 0
    table2 = (tmp_path / "tables" / "table2_ablation.md").read_text()
    assert "21.761" in table2 and "20.012" in table2  # the paper's numbers beside ours
    assert "| joint + CCM + RGB | main |" in table2  # `full` has main's switches: its row is main's run
    assert "not evaluated" in table2 and "trivial: blank white image" in table2
    assert "unavailable" in table2
    t3 = pd.read_csv(tmp_path / "tables" / "table3_feedback_window.csv")
    assert list(t3.run[:2]) == ["main", "main-fs1.0"] and t3.paper_3d_psnr[0] == 21.761
    assert math.isnan(t3.paper_3d_psnr[1])

    argv = ["--eval", str(runs), "--out", str(tmp_path / "figures")]
    assert load_script("figures").main(argv) == 0
    for f in ("denoising_steps.png", "denoising_curves.png"):
        assert (tmp_path / "figures" / f).read_bytes()[:4] == b"\x89PNG"
    curves = pd.read_csv(tmp_path / "figures" / "denoising_curves.csv")
    assert list(curves.columns) == [
        "step",
        "sigma",
        "psnr_3d_feedback",
        "cd_feedback",
        "psnr_3d_no_feedback",
        "cd_no_feedback",
    ]
    assert len(curves) == 2


def test_variants_override_the_top_level_switches():
    params = params_from_dict(tiny_raw())
    assert params.with_variant("main") is params
    base = params.with_variant("baseline")
    assert (base.feedback, base.joint, base.variants) == (False, False, {})
    assert base.model == params.model and base.train == params.train
    ccm = params.with_variant("ccm")
    assert ccm.feedback_ccm and not ccm.feedback_rgb
    # `-S feedback=false` changes the main model, not the variants
    no_fb = params_from_dict(tiny_raw(feedback=False))
    assert not no_fb.feedback and no_fb.with_variant("full").feedback_rgb


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"variants": {"odd": {"data": {"resolution": 64}}}}, "variants.odd"),
        ({"variants": {"bad": {"feedback": True, "feedback_maps": ["ccm"], "joint": False}}}, "variants.bad"),
        # a variant inheriting a top-level switch would change with `-S feedback=false`
        (
            {"variants": {"partial": {"feedback": False, "joint": False}}},
            r"variants.partial: must set \['feedback_maps'\]",
        ),
        ({"train_variants": ["nope"]}, "train_variants"),
        ({"evaluation": {"fscore_thresholds": []}}, "evaluation.fscore_thresholds"),
    ],
)
def test_bad_variants_and_evaluation_params_are_rejected(changes, message):
    with pytest.raises(ParamsError, match=message):
        params_from_dict(tiny_raw(**changes))


def test_train_rejects_an_unknown_variant(capsys):
    assert load_script("train").main(["--params", str(ROOT / "params.yaml"), "--variant", "nope"]) == 2
    assert "unknown variant 'nope'" in capsys.readouterr().err
