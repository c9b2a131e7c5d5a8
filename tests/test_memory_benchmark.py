"""benchmarks/memory.py: meta-device builds, parameter counts, the byte arithmetic, CPU labelling."""

from __future__ import annotations

import importlib.util
import json

import torch
from conftest import ROOT

from ouroboros3d.config import load_params


def load_memory():
    spec = importlib.util.spec_from_file_location("memory_benchmark", ROOT / "benchmarks" / "memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paper_preset_builds_on_meta_with_svd_and_lgm_sizes():
    memory = load_memory()
    model = memory.build(load_params(ROOT / "params.yaml", preset="paper"), "meta")
    # nothing allocated, but for SVD VAE's 52 scalar mix factors (diffusers' AlphaBlender builds
    # them from a CPU tensor whatever the default device)
    assert sum(p.numel() for p in model.parameters() if not p.is_meta) <= 100
    counts = memory.parameter_counts(model)
    assert counts["unet"] == 1_524_623_082  # SVD's UNet exactly (params.yaml)
    assert counts["reconstructor"] == 423_852_239  # LGM big (params.yaml)
    assert counts["frozen_image_encoder"] == counts["image_encoder"]  # CLIP, frozen
    assert counts["frozen"] == counts["image_encoder"] + counts["autoencoder"] > counts["image_encoder"]  # + VAE
    assert counts["trainable"] + counts["frozen"] == counts["total"]
    assert counts["feedback_total"] == counts["feedback_ccm"] + counts["feedback_rgb"] > 0


def test_static_bytes():
    memory = load_memory()
    b = memory.static_bytes({"total": 10, "trainable": 8}, "bf16")
    assert (b["weights"], b["gradients"], b["adamw"], b["ema"]) == (40, 32, 64, 32)
    assert b["static_total"] == 168 and b["autocast_copies_estimate"] == 16
    assert b["zero2_per_gpu_estimate"] == 2 * 10 + 14 * 8 // 8 + 4 * 8
    assert memory.static_bytes({"total": 10, "trainable": 8}, "no")["autocast_copies_estimate"] == 0


def test_cpu_machine_does_not_measure_big_presets(tmp_path, capsys):
    memory = load_memory()
    out = tmp_path / "memory.json"
    assert memory.main(["--presets", "gpu-medium", "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    row = report["presets"]["gpu-medium"]
    assert row["measured"]["step"].startswith("not measured") and row["train_precision"] == "bf16"
    assert row["parameters"]["unet"] > 90e6 and row["bytes"]["weights"] == 4 * row["parameters"]["total"]
    assert "| gpu-medium | - | not measured (CPU machine) |" in capsys.readouterr().out
    assert torch.get_default_device() == torch.device("cpu")  # the meta build left no default behind
