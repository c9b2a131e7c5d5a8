"""The whole pipeline, tiny: `dvc repro` in a copy of the repository, then the results notebook.

Render a handful of real objects at 16², train a few steps (main + baseline variant), evaluate
(main, the feedback windows, the variant), tables and figures; every expected output must
exist and parse, and notebooks/results.ipynb must execute on them.
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
from conftest import ROOT, tiny_raw
from PIL import Image

BIN = Path(sys.executable).parent


def _copy_repository(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in files.decode().split("\0"):
        if name and (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    (dest / "dvc.lock").unlink(missing_ok=True)  # every stage runs afresh
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)


@pytest.mark.slow
def test_tiny_dvc_repro_produces_every_table_and_figure_and_the_notebook_runs(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _copy_repository(repo)
    raw = tiny_raw(
        train={"steps": 3, "checkpoint_every": 3},
        evaluation={"gt_points": 2000, "step_objects": 1, "batch_size": 2},
    )
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = os.environ | {
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(repo),  # the copy's package, whatever the venv's editable install points at
        "DVC_NO_ANALYTICS": "1",
    }
    run = subprocess.run([str(BIN / "dvc"), "repro"], cwd=repo, env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]

    metrics = json.loads((repo / "results" / "metrics.json").read_text())
    assert metrics and all(isinstance(v, (int, float, dict, str)) for v in metrics.values())
    for name in ("main", "main-fs0.4", "main-fs0.8", "main-fs1.0", "baseline"):
        per_object = pd.read_csv(repo / "results" / "eval" / name / "per_object.csv")
        assert len(per_object) == 2 and {"mv_psnr", "3d_psnr", "cd"} <= set(per_object.columns), name
    for stem in ("table2_ablation", "table3_feedback_window"):
        assert (repo / "results" / "tables" / f"{stem}.md").read_text().startswith("# Table")
        assert len(pd.read_csv(repo / "results" / "tables" / f"{stem}.csv")) >= 1
    for png in ("dataset_train", "dataset_eval", "denoising_steps", "denoising_curves"):
        with Image.open(repo / "results" / "figures" / f"{png}.png") as im:
            assert im.size[0] > 100 and im.size[1] > 100
    with Image.open(repo / "paper" / "figures" / "generate_example.png") as im:
        assert im.size[0] > 100
    loss = pd.read_csv(repo / "results" / "train" / "main" / "loss.csv")
    assert loss["step"].tolist() == [1, 2, 3]
    assert (repo / "models" / "main" / "model.safetensors").stat().st_size > 0
    report = (repo / "paper" / "report.md").read_text()
    assert "{{" not in report and "## The paper's claims, as measured here" in report

    # a second repro has nothing to do: outputs are up to date, nothing is recomputed
    again = subprocess.run([str(BIN / "dvc"), "repro"], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "Running stage" not in again.stdout, again.stdout

    notebook = repo / "notebooks" / "results.ipynb"
    nb = subprocess.run(
        [
            str(BIN / "jupyter"),
            "nbconvert",
            "--to",
            "notebook",
            "--execute",
            "--output",
            str(tmp_path / "out.ipynb"),
            notebook,
        ],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert nb.returncode == 0, nb.stderr[-4000:]
