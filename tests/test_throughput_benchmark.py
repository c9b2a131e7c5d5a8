"""benchmarks/bench_throughput.py: issue 17's F, the reference its speed-up is quoted against."""

from __future__ import annotations

import dataclasses
import importlib.util

import torch
from conftest import ROOT

from ouroboros3d.build import build_model
from ouroboros3d.config import load_params
from ouroboros3d.models.denoiser import parameter_summary


def load_throughput(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # it imports bench_ouroboros's timer
    spec = importlib.util.spec_from_file_location("throughput_benchmark", ROOT / "benchmarks" / "bench_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_issue_17_f_is_the_wide_f_with_everything_else_from_the_params(monkeypatch):
    bench = load_throughput(monkeypatch)
    params = load_params(ROOT / "params.yaml")
    reference = bench.issue_17_params(params)
    assert reference is not None and reference.model.denoiser != params.model.denoiser
    for key, value in bench.ISSUE_17_DENOISER.items():
        assert getattr(reference.model.denoiser, key) == value, key
    # only the three widths differ: the rest of F, G and training are the params'
    widths = dict.fromkeys(bench.ISSUE_17_DENOISER)

    def without_widths(p):
        return dataclasses.replace(p.model.denoiser, **widths)

    assert without_widths(reference) == without_widths(params)
    assert reference.model.reconstructor == params.model.reconstructor
    assert reference.pretrain == params.pretrain and reference.seed == params.seed
    torch.manual_seed(0)
    parts = parameter_summary(build_model(reference.for_pretraining("denoiser")).denoiser.net)
    assert parts["total"] == 11_181_371  # issue 17's F as its pretraining saved it (11.2 M)


def test_issue_17_f_is_not_timed_twice_nor_outside_cpu_small(monkeypatch):
    bench = load_throughput(monkeypatch)
    params = load_params(ROOT / "params.yaml")
    assert bench.issue_17_params(bench.issue_17_params(params)) is None  # already issue 17's F
    assert bench.issue_17_params(load_params(ROOT / "params.yaml", preset="gpu-medium")) is None
