"""The published pretrained F and G (``models/pretrain/``, tracked in git as the paper's SVD and
LGM are downloaded): they are what params.yaml describes, and their pretraining reproduces
from the seed.

A fresh clone's ``dvc repro`` starts from these weights (the ``pretrain_*`` stages are frozen);
``make pretrain`` (unfreeze, repro, freeze) re-creates them. F is published twice: the second
publication (``denoiser_continued``) starts from the first.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import CHILD_ENV, ROOT

from ouroboros3d.build import training_fingerprint
from ouroboros3d.config import load_params
from ouroboros3d.config.params import PRETRAININGS
from ouroboros3d.inference.model_folder import read_checkpoint_params

RUNS = tuple(PRETRAININGS)  # denoiser, reconstructor, denoiser_continued
# where each run starts: the params' (scratch), or the publication it continues
STARTS = {"denoiser_continued": (ROOT / "models" / "pretrain" / "denoiser",)}


def _pretraining_fingerprint(params, run: str) -> str:
    part, settings = params.pretraining(run)
    return training_fingerprint(dataclasses.replace(params.for_pretraining(part), train=settings), STARTS.get(run, ()))


@pytest.mark.parametrize("run", RUNS)
def test_the_published_weights_were_trained_with_params_yaml(run):
    """Their params.json gives the same training fingerprint (every param that changes what
    pretraining computes, the training data settings and the weights it started from included)
    as params.yaml today."""
    folder = ROOT / "models" / "pretrain" / run
    weights = sorted(folder.glob("*/diffusion_pytorch_model.safetensors"))
    assert weights and all(w.stat().st_size > 0 for w in weights), f"no published weights in {folder}"
    _, published = read_checkpoint_params(folder)
    ours = _pretraining_fingerprint(load_params(ROOT / "params.yaml"), run)
    assert _pretraining_fingerprint(published, run) == ours


def test_dvc_yaml_freezes_the_pretraining_and_keeps_its_outputs_in_git():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for run in RUNS:
        stage = stages[f"pretrain_{run}"]
        assert stage.get("frozen") is True, run
        outs = {next(iter(o)) if isinstance(o, dict) else o: o for o in stage["outs"]}
        model = outs[f"models/pretrain/{run}"]
        assert isinstance(model, dict) and model[f"models/pretrain/{run}"]["cache"] is False, run
    assert "models/pretrain/denoiser" in stages["pretrain_denoiser_continued"]["deps"]


@pytest.mark.slow
def test_pretraining_f_reproduces_its_published_curves_from_the_seed(tmp_path):
    """Render the train and val splits, run both of F's pretraining stages (the second from the
    first's published weights) for their first logged steps, and compare the loss with the
    committed curves. On this project's CPUs it is the same to the bit; another CPU's float32
    kernels may differ in the last bits, hence the 1e-4 tolerance."""
    env = os.environ | CHILD_ENV | {"PYTHONPATH": str(ROOT)}
    python, params = sys.executable, str(ROOT / "params.yaml")
    data = tmp_path / "data"
    for cmd in (
        [python, str(ROOT / "experiments/render.py"), "--params", params, "--out", str(data / "renders"),
         "--splits", "train", "val", "--no-progress"],
        [python, str(ROOT / "experiments/ccm.py"), "--params", params, "--renders", str(data / "renders"),
         "--out", str(data / "ccm"), "--figures", str(tmp_path / "figures"), "--splits", "train", "val",
         "--no-progress"],
    ):  # fmt: skip
        run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    for name in ("denoiser", "denoiser_continued"):
        start = [f"--init={folder.parent}" for folder in STARTS.get(name, ())]  # train.py: <init>/denoiser
        log = f"results/train/pretrain_{name}/plots/metrics/train/loss.tsv"
        published = pd.read_csv(ROOT / log, sep="\t")
        first = int(published["step"].iloc[0])
        cmd = [python, str(ROOT / "experiments/train.py"), "--params", params, "--pretrain", name, *start]
        cmd += ["--data", str(data), "--stop-after", str(first)]
        run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        ours = pd.read_csv(tmp_path / log, sep="\t")
        assert list(ours["step"]) == [first], name
        expected, got = float(published["loss"].iloc[0]), float(ours["loss"].iloc[0])
        assert got == pytest.approx(expected, rel=1e-4), f"{name} step {first}: loss {got!r}, published {expected!r}"
    assert not (Path(tmp_path) / "models").exists()  # a stopped run publishes nothing
