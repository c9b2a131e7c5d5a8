"""scripts/gpu_check.py: refuses cleanly without CUDA; its checks' code runs (on the CPU, tiny).

The GPU path itself (gsplat's CUDA kernels, bf16 training, CUDA memory figures) cannot run on
a CPU-only machine; the second test runs the same functions with the CPU standing in, so that
a change to the library's API breaks here rather than on the first GPU machine.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

from conftest import ROOT, tiny_params

SCRIPT = ROOT / "scripts" / "gpu_check.py"


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_refuses_without_cuda(tmp_path):
    env = os.environ | {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}  # no GPU, even on a GPU machine
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert lines == [lines[-1]] and lines[-1].startswith("error: gpu-check needs a CUDA GPU"), proc.stderr
    assert not (tmp_path / "results").exists()  # nothing written


def test_checks_run_with_the_cpu_standing_in():
    gpu_check = load_gpu_check()
    params = tiny_params()
    raster = gpu_check.check_rasteriser(params, objects=1, gaussians=200, device="cpu", backend="torch")
    assert raster["ok"] and raster["images"]["rgb"]["max"] == 0.0
    assert set(raster["gradients"]) == set(gpu_check.FIELDS)
    training, model = gpu_check.check_training(params, steps=2, objects=3, mixed_precision="no")
    assert training["ok"] and training["steps"] == 2 and len(training["step_seconds"]) == 2
    sampling = gpu_check.check_sampling(model, params)
    assert sampling["ok"] and sampling["steps"] == params.sample.steps and sampling["gaussians"] > 0
