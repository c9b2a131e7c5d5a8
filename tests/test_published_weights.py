"""The published pretrained F and G (``models/pretrain/``, tracked in git as the paper's SVD and
LGM are downloaded): they are what params.yaml describes, and their pretraining reproduces
from the seed.

A fresh clone's ``dvc repro`` starts from these weights (the ``pretrain_*`` stages are frozen);
``dvc unfreeze pretrain_denoiser pretrain_reconstructor && dvc repro`` re-creates them.
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
from ouroboros3d.inference.model_folder import read_checkpoint_params

PARTS = ("denoiser", "reconstructor")


def _pretraining_fingerprint(params, part: str) -> str:
    params = params.for_pretraining(part)
    return training_fingerprint(dataclasses.replace(params, train=getattr(params.pretrain, part)))


@pytest.mark.parametrize("part", PARTS)
def test_the_published_weights_were_trained_with_params_yaml(part):
    """Their params.json gives the same training fingerprint (every param that changes what
    pretraining computes, the training data settings included) as params.yaml today."""
    folder = ROOT / "models" / "pretrain" / part
    weights = sorted(folder.glob("*/diffusion_pytorch_model.safetensors"))
    assert weights and all(w.stat().st_size > 0 for w in weights), f"no published weights in {folder}"
    _, published = read_checkpoint_params(folder)
    assert _pretraining_fingerprint(published, part) == _pretraining_fingerprint(
        load_params(ROOT / "params.yaml"), part
    )


def test_dvc_yaml_freezes_the_pretraining_and_keeps_its_outputs_in_git():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for part in PARTS:
        stage = stages[f"pretrain_{part}"]
        assert stage.get("frozen") is True, part
        outs = {next(iter(o)) if isinstance(o, dict) else o: o for o in stage["outs"]}
        model = outs[f"models/pretrain/{part}"]
        assert isinstance(model, dict) and model[f"models/pretrain/{part}"]["cache"] is False, part


@pytest.mark.slow
def test_pretraining_f_reproduces_its_published_curve_from_the_seed(tmp_path):
    """Render the train and val splits, run F's pretraining stage for its first logged steps,
    and compare the loss with the committed curve. On this project's CPUs it is the same to the
    bit; another CPU's float32 kernels may differ in the last bits, hence the 1e-4 tolerance."""
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
    published = pd.read_csv(ROOT / "results/train/pretrain_denoiser/plots/metrics/train/loss.tsv", sep="\t")
    first = int(published["step"].iloc[0])
    cmd = [python, str(ROOT / "experiments/train.py"), "--params", params, "--pretrain", "denoiser"]
    cmd += ["--data", str(data), "--stop-after", str(first)]
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    ours = pd.read_csv(tmp_path / "results/train/pretrain_denoiser/plots/metrics/train/loss.tsv", sep="\t")
    assert list(ours["step"]) == [first]
    expected, got = float(published["loss"].iloc[0]), float(ours["loss"].iloc[0])
    assert got == pytest.approx(expected, rel=1e-4), f"step {first}: loss {got!r}, published {expected!r}"
    assert not (Path(tmp_path) / "models").exists()  # a stopped run publishes nothing
