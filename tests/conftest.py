"""Shared test helpers: tiny params that exercise the real code paths in seconds."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import yaml

from ouroboros3d.config import _deep_merge, params_from_dict
from ouroboros3d.data.synthetic import synthetic_batch

ROOT = Path(__file__).resolve().parents[1]

# Every test tensor is tiny: one thread. Two OpenMP threads spin-wait whenever another process
# (an xdist worker) holds the other core, and then run 10-100x slower.
torch.set_num_threads(1)
# ... and so is every child process a test starts (stage scripts, dvc, accelerate's ranks): a
# child with 2 threads beside the other xdist worker once slowed a 2-rank run past its timeout.
CHILD_ENV = {"OMP_NUM_THREADS": "1", "DVC_NO_ANALYTICS": "1"}


def load_script(name: str):
    """An experiments/ stage script as a module (experiments/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"experiments_{name}", ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY = {
    "data": {
        "resolution": 16,
        "min_objects": 1,
        "train": {"max_objects": 3, "real_objects": 1, "real_orbits": 2},
        "val": {"max_objects": 2},
        "eval": {"max_objects": 2},
    },
    "camera": {"view_frames": [0, 4, 8, 12]},
    "model": {
        "denoiser": {
            "block_out_channels": [32, 32, 32, 32],
            "num_attention_heads": [1, 1, 1, 1],
            "cross_attention_dim": 16,
            "addition_time_embed_dim": 4,
            "image_encoder_channels": [8, 8, 8, 8],
            "camera_embed_dim": 8,
            "camera_frequencies": 2,
            "feedback_blocks_per_scale": 1,
        },
        "reconstructor": {
            "image_size": 16,
            "down_channels": [8, 16, 16],
            "up_channels": [16, 8],
            "attention_head_dim": 8,
        },
        "recon_views": [0, 2],
    },
    "pretrain": {
        "denoiser": {"steps": 2, "checkpoint_every": 2, "log_every": 1, "warmup_steps": 1, "validate_every": 1},
        "reconstructor": {"steps": 2, "checkpoint_every": 2, "log_every": 1, "warmup_steps": 1},
        "denoiser_continued": {
            "steps": 2,
            "checkpoint_every": 2,
            "log_every": 1,
            "warmup_steps": 1,
            "validate_every": 1,
        },
    },
    "train": {"steps": 6, "batch_size": 2, "checkpoint_every": 2, "log_every": 1, "warmup_steps": 1, "lr": 1e-3},
    "sample": {"steps": 3, "guidance": [1.0, 2.0]},
}


def frozen_stages(root: Path = ROOT) -> list[str]:
    """The published pretraining stages (frozen in dvc.yaml): a run on other params re-creates them."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    return [name for name, stage in stages.items() if stage.get("frozen")]


def tiny_raw(**changes) -> dict:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    return _deep_merge(_deep_merge(raw, TINY), changes)


def tiny_params(**changes):
    return params_from_dict(tiny_raw(**changes))


class SyntheticDataset(torch.utils.data.Dataset):
    def __init__(self, params, size: int = 4):
        self.items = []
        for i in range(size):
            b = synthetic_batch(params, 1, seed=i)
            self.items.append({k: t[0] for k, t in b.items()})
        # named as the render stage names them: the last object a real scan (the params'
        # train.real_share draws from it)
        self.object_ids = [f"random_urdfs-{i:03d}" for i in range(size - 1)] + ["ycb-synthetic~orbit0"]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


@pytest.fixture
def params():
    return tiny_params()
