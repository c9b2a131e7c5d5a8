"""The whole pipeline, tiny: `dvc repro` in a copy of the repository, then the results notebook.

Render a handful of real objects at 16², pretrain F and G a few steps, fine-tune main and the
baseline variant from them, evaluate (main, the feedback windows, the variant), tables,
figures, report and the executed notebook; every expected output must exist and parse. Then
a DVC remote round trip (push, clone, pull: nothing to re-run), and `dvc exp run -S
feedback=false` re-runs the fine-tune and evaluation but no pretraining.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import CHILD_ENV, ROOT, frozen_stages, tiny_raw
from PIL import Image
from safetensors import safe_open

BIN = Path(sys.executable).parent


def _copy_repository(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in files.decode().split("\0"):
        if name and (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    (dest / "dvc.lock").unlink(missing_ok=True)  # every stage runs afresh
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)


def _weights(folder: Path) -> list[Path]:
    """The component weight files of a saved model folder (``Ouroboros3DPipeline.save_pretrained``)."""
    assert (folder / "model_index.json").is_file() and (folder / "params.json").is_file(), folder
    files = sorted(folder.glob("*/diffusion_pytorch_model.safetensors"))
    assert files and all(f.stat().st_size > 0 for f in files), folder
    return files


@pytest.mark.slow
def test_tiny_dvc_repro_produces_every_table_and_figure_and_the_notebook_runs(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _copy_repository(repo)
    raw = tiny_raw(
        train={"steps": 3, "checkpoint_every": 3},
        train_variants=["baseline"],  # one variant: the others are the same stage with other params
        evaluation={"gt_points": 2000, "step_objects": 1, "batch_size": 2},
    )
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    # PYTHONPATH: the copy's package, whatever the venv's editable install points at
    env = os.environ | CHILD_ENV | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(repo)}
    # the published pretrained weights are for params.yaml, not these tiny params: re-create them
    # as the README says (the pretraining stages are frozen so that a clone starts from them)
    unfreeze = [str(BIN / "dvc"), "unfreeze", *frozen_stages(repo)]
    subprocess.run(unfreeze, cwd=repo, env=env, check=True, capture_output=True)
    run = subprocess.run([str(BIN / "dvc"), "repro"], cwd=repo, env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "Running stage 'pretrain_denoiser'" in run.stdout
    assert "Running stage 'pretrain_denoiser_continued'" in run.stdout

    metrics = json.loads((repo / "results" / "metrics.json").read_text())
    assert metrics and all(isinstance(v, (int, float, dict, str)) for v in metrics.values())
    for name in ("main", "main-fs0.4", "main-fs0.8", "main-fs1.0", "baseline"):
        per_object = pd.read_csv(repo / "results" / "eval" / name / "per_object.csv")
        assert len(per_object) == 2 and {"mv_psnr", "3d_psnr", "cd"} <= set(per_object.columns), name
        # mesh geometry for Table 2's runs; Table 3's windows compare depth points only
        assert ("volume_iou" in per_object) == ("-fs" not in name), name
    for stem in ("table2_ablation", "table3_feedback_window"):
        assert (repo / "results" / "tables" / f"{stem}.md").read_text().startswith("# Table")
        assert len(pd.read_csv(repo / "results" / "tables" / f"{stem}.csv")) >= 1
    for png in (
        "dataset_train",
        "dataset_val",
        "dataset_eval",
        "denoising_steps",
        "denoising_curves",
        "learning_curves",
    ):
        with Image.open(repo / "results" / "figures" / f"{png}.png") as im:
            assert im.size[0] > 100 and im.size[1] > 100
    with Image.open(repo / "paper" / "figures" / "generate_example.png") as im:
        assert im.size[0] > 100
    # the training stages' dvclive logs: curves for `dvc plots`, final values for `dvc exp show`
    train_log = repo / "results" / "train"
    loss = pd.read_csv(train_log / "main" / "plots" / "metrics" / "train" / "loss.tsv", sep="\t")
    assert loss["step"].tolist() == [1, 2, 3]
    main_metrics = json.loads((train_log / "main" / "metrics.json").read_text())
    assert main_metrics["step"] == 3 and main_metrics["run"]["finished"] and "loss_mv" in main_metrics["train"]
    assert main_metrics["train"]["loss"] == loss["loss"].iloc[-1] and "mv_psnr" in main_metrics["val"]
    run_params = yaml.safe_load((train_log / "main" / "params.yaml").read_text())
    # pretrained once (F twice: the second from the first), every fine-tune starts from them
    for part, start in (("denoiser", "denoiser_continued"), ("reconstructor", "reconstructor")):
        assert _weights(repo / "models" / "pretrain" / part) and _weights(repo / "models" / "pretrain" / start)
        assert run_params["init"][part] == f"models/pretrain/{start}"
    val = pd.read_csv(train_log / "pretrain_denoiser" / "plots" / "metrics" / "val" / "white_psnr.tsv", sep="\t")
    assert val["step"].tolist() == [1, 2] and (val["white_psnr"] > 0).all()
    val_g = {p.stem for p in (train_log / "pretrain_reconstructor" / "plots" / "metrics" / "val").glob("*.tsv")}
    assert {"recon_psnr", "copy_input_psnr"} <= val_g  # G's curve
    val_g = pd.read_csv(train_log / "pretrain_reconstructor" / "plots" / "metrics" / "val" / "recon_psnr.tsv", sep="\t")
    assert val_g["step"].iloc[-1] == 2
    assert _weights(repo / "models" / "main")
    report = (repo / "paper" / "report.md").read_text()
    assert "{{" not in report and "## The paper's claims, as measured here" in report

    # a second repro has nothing to do: outputs are up to date, nothing is recomputed
    again = subprocess.run([str(BIN / "dvc"), "repro"], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "Running stage" not in again.stdout, again.stdout

    # the notebook stage executed the results notebook in place: every code cell has run
    nb = json.loads((repo / "notebooks" / "results.ipynb").read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(c["execution_count"] for c in code)
    assert any("image/png" in o.get("data", {}) for c in code for o in c["outputs"])
    assert not any(o.get("output_type") == "error" for c in code for o in c["outputs"])

    # the mission's headline ablation: DVC rewrites params.yaml (YAML 1.2, no quotes), re-runs
    # the fine-tune and the evaluations, never the pretraining, and records the metrics
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "tiny repro"], cwd=repo, check=True)

    # a team shares data and models through a DVC remote: push, clone, pull, nothing to re-run
    dvc = str(BIN / "dvc")
    subprocess.run([dvc, "remote", "add", "-d", "shared", str(tmp_path / "remote")], cwd=repo, env=env, check=True)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "remote"], cwd=repo, check=True)
    push = subprocess.run([dvc, "push"], cwd=repo, env=env, capture_output=True, text=True)
    assert push.returncode == 0, push.stderr[-2000:]
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    clone_env = env | {"PYTHONPATH": str(clone)}
    pull = subprocess.run([dvc, "pull"], cwd=clone, env=clone_env, capture_output=True, text=True)
    assert pull.returncode == 0, pull.stderr[-2000:]
    status = subprocess.run([dvc, "status"], cwd=clone, env=clone_env, capture_output=True, text=True)
    assert "up to date" in status.stdout, status.stdout
    nothing = subprocess.run([dvc, "repro"], cwd=clone, env=clone_env, capture_output=True, text=True, timeout=600)
    assert nothing.returncode == 0 and "Running stage" not in nothing.stdout, nothing.stdout
    notebook = "notebooks/results.ipynb"
    assert (clone / notebook).read_bytes() == (repo / notebook).read_bytes()

    exp = subprocess.run(
        [str(BIN / "dvc"), "exp", "run", "-S", "feedback=false"], cwd=repo, env=env, capture_output=True, text=True,
        timeout=1200,
    )  # fmt: skip
    assert exp.returncode == 0, exp.stdout[-4000:] + exp.stderr[-4000:]
    assert "Running stage 'train'" in exp.stdout and "Running stage 'pretrain_" not in exp.stdout
    # the experiment's model (checked out into the workspace) has no feedback networks at all
    names = []
    for path in _weights(repo / "models" / "main"):
        with safe_open(str(path), "pt") as weights:
            names += list(weights.keys())
    assert names and not [n for n in names if "feedback" in n], [n for n in names if "feedback" in n][:5]
    shown = subprocess.run(
        [str(BIN / "dvc"), "exp", "show", "--json"], cwd=repo, env=env, capture_output=True, text=True, check=True
    )
    # the experiment is recorded with its params and the metrics its evaluation wrote
    exps = [rev["data"] for row in json.loads(shown.stdout) for e in row.get("experiments") or [] for rev in e["revs"]]
    assert len(exps) == 1, shown.stdout[-2000:]
    assert exps[0]["params"]["params.yaml"]["data"]["feedback"] is False
    assert exps[0]["metrics"]["results/metrics.json"]["data"]["mv"]["psnr"] > 0
    # and with the fine-tune's dvclive metrics: its final losses and val scores
    trained = exps[0]["metrics"]["results/train/main/metrics.json"]["data"]
    assert trained["step"] == 3 and trained["train"]["loss"] > 0 and trained["val"]["mv_psnr"] > 0
    # the training curves are DVC plots, drawn across experiments: the commit against the experiment
    name = [rev["name"] for row in json.loads(shown.stdout) for e in row.get("experiments") or [] for rev in e["revs"]]
    diff = subprocess.run(
        [dvc, "plots", "diff", "HEAD", name[0], "--json"], cwd=repo, env=env, capture_output=True, text=True, check=True
    )
    plots = json.loads(diff.stdout)["data"]
    assert plots["training_loss"][0]["revisions"] == ["HEAD", name[0]], list(plots)
    assert plots["results/train/main/plots/metrics/val/mv_psnr.tsv"][0]["revisions"] == ["HEAD", name[0]]
