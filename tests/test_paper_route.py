"""The paper route end to end on CPU (issue 18): ``scripts/paper_route.py`` drives the stage
scripts (render, ccm, both pretrainings with validation at every step, the joint fine-tune,
evaluate, ``ouroboros3d generate``) on params that keep every structural choice of the
``paper`` preset (SVD's VAE latents, the frozen CLIP token, an SVD-layout UNet folder as F's
init, LGM-big's layout, guidance, the paper's noise levels) and shrink only widths, resolution
and steps. Before the one initial-noise function, its first validation with ``latent: vae``
crashed (noise at image size where the sampler wants latents)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import CHILD_ENV, ROOT

SCRIPT = ROOT / "scripts" / "paper_route.py"


def test_route_params_keep_the_paper_presets_structure():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import paper_route
    finally:
        sys.path.remove(str(SCRIPT.parent))
    from ouroboros3d.config import params_from_dict

    paper = yaml.safe_load((ROOT / "params.yaml").read_text())
    paper["preset"] = "paper"
    full, tiny = params_from_dict(paper), params_from_dict(paper_route.route_params(cuda=True))
    for a, b in ((full.model, tiny.model), (full.model.denoiser, tiny.model.denoiser)):
        for key in ("latent", "residual", "sigma_data", "vae_path", "denoiser_init", "image_encoder",
                    "image_encoder_path", "down_block_types", "up_block_types"):  # fmt: skip
            if hasattr(a, key):
                assert getattr(a, key) == getattr(b, key), key
    g, tg = full.model.reconstructor, tiny.model.reconstructor
    assert (g.down_attention, g.up_attention, g.color_skip) == (tg.down_attention, tg.up_attention, tg.color_skip)
    assert len(g.down_channels) == len(tg.down_channels) and len(g.up_channels) == len(tg.up_channels)
    assert (full.train.p_mean, full.train.p_std, full.train.mixed_precision) == (
        tiny.train.p_mean, tiny.train.p_std, tiny.train.mixed_precision,
    )  # fmt: skip
    assert (full.sample.guidance, full.sample.sigma_max) == (tiny.sample.guidance, tiny.sample.sigma_max)
    assert tiny.data.resolution < full.data.resolution and tiny.train.steps < full.train.steps


@pytest.mark.slow
def test_the_paper_route_runs_through_the_stage_scripts(tmp_path):
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path)],
        env=os.environ | CHILD_ENV, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((tmp_path / "route.json").read_text())
    assert "failed" not in report
    assert set(report["seconds"]) >= {"pretrain_denoiser", "pretrain_reconstructor", "train", "evaluate", "generate"}
    checks = report["checks"]
    assert checks["views"] == 8 and checks["view_size"] == 64 and checks["gaussians"] > 0
    assert checks["eval_objects"] == 2
    # validation ran with latent: vae at every pretraining step, and at the fine-tune's end
    for run_name, steps in (("pretrain_denoiser", [1, 2]), ("main", [2])):
        val = tmp_path / "results" / "train" / run_name / "plots" / "metrics" / "val" / "mv_psnr.tsv"
        rows = val.read_text().splitlines()[1:]
        assert [int(r.split("\t")[0]) for r in rows] == steps, run_name
