"""DVC stage `train`: joint training (Algorithm 1) on the rendered training split.

Writes the EMA weights and the resolved params to ``models/<variant>/`` and the loss curve
to ``results/train/<variant>/loss.csv``. The rolling checkpoint in
``checkpoints/<variant>/`` persists across runs: re-running after a kill resumes from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

from ouroboros3d.build import build_model, training_fingerprint
from ouroboros3d.config import ParamsError, load_params
from ouroboros3d.data.dataset import MultiViewDataset
from ouroboros3d.io import atomic_write_text, save_weights
from ouroboros3d.perceptual import WeightsUnavailable, load_lpips
from ouroboros3d.training import train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument(
        "--variant", default="main", help="main (the top-level params) or a name in params `variants` (Table 2)"
    )
    parser.add_argument("--data", default="data", help="the data/ folder of the render and ccm stages")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params).with_variant(args.variant)
        lpips = load_lpips() if params.train.lpips_weight > 0 else None
    except (ParamsError, WeightsUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    torch.manual_seed(params.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    dataset = MultiViewDataset.for_split("train", args.data, params.ccm.normalization)
    model = build_model(params)
    fingerprint = training_fingerprint(params)
    summary = train(
        model,
        dataset,
        params.train,
        # one folder per params fingerprint: experiments with other params never clobber it
        Path("checkpoints") / args.variant / fingerprint,
        Path("results/train") / args.variant / "loss.csv",
        seed=params.seed,
        fingerprint=fingerprint,
        lpips=lpips,
    )
    summary.pop("ema").copy_to(model)
    out = Path("models") / args.variant
    save_weights(model, out / "model.safetensors")
    atomic_write_text(out / "params.json", json.dumps(dataclasses.asdict(params), indent=2, sort_keys=True))
    summary["objects"] = len(dataset)
    summary["parameters"] = sum(p.numel() for p in model.parameters())
    atomic_write_text(Path("results/train") / args.variant / "summary.json", json.dumps(summary, indent=2))
    print(f"trained {summary['steps']} steps in {summary['seconds']:.0f} s; final loss {summary['final_losses']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
