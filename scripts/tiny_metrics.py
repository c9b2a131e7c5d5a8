"""Fingerprint of the tiny pipeline's results, to show a refactor changes no numbers.

Runs ``dvc repro`` on the test suite's tiny params in a throwaway copy of the committed
repository (what ``tests/test_pipeline_e2e.py`` runs) and prints one SHA-256 per result
file: metrics, per-object evaluations, tables, training metrics. Run it before and after a
refactor commit; identical lines mean identical results.

    python scripts/tiny_metrics.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

RESULTS = [
    "results/metrics.json",
    "results/eval/*/per_object.csv",
    "results/eval/*/summary.json",
    "results/tables/*.csv",
    "results/train/*/metrics.json",
    "results/train/*/plots/metrics/*/*.tsv",  # every logged curve (but seconds.tsv, wall-clock time)
]


def _drop_timings(value):
    if isinstance(value, dict):
        return {k: _drop_timings(v) for k, v in value.items() if "second" not in k}
    return value


def _comparable(path: Path) -> bytes:
    """The file's bytes; a JSON file without its wall-clock fields (``seconds``...), which differ run to run."""
    if path.suffix != ".json":
        return path.read_bytes()
    return json.dumps(_drop_timings(json.loads(path.read_text())), sort_keys=True).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="run in this folder (kept) instead of a temporary one")
    args = parser.parse_args()
    from conftest import frozen_stages, tiny_raw
    from test_pipeline_e2e import _copy_repository

    with tempfile.TemporaryDirectory() as tmp:
        repo = args.keep or Path(tmp) / "repo"
        repo.mkdir(parents=True, exist_ok=True)
        _copy_repository(repo)
        raw = tiny_raw(
            train={"steps": 3, "checkpoint_every": 3},
            evaluation={"gt_points": 2000, "step_objects": 1, "batch_size": 2},
        )
        (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        bin_dir = Path(sys.executable).parent
        env = os.environ | {
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(repo),
            "DVC_NO_ANALYTICS": "1",
            "PYTHONHASHSEED": "0",
        }
        # the published pretrained weights are for params.yaml, not the tiny params: re-create them
        # (as tests/test_pipeline_e2e.py does; the pretraining stages are frozen for fresh clones)
        unfreeze = [str(bin_dir / "dvc"), "unfreeze", *frozen_stages(repo)]
        subprocess.run(unfreeze, cwd=repo, env=env, check=True, capture_output=True)
        run = subprocess.run([str(bin_dir / "dvc"), "repro"], cwd=repo, env=env, capture_output=True, text=True)
        if run.returncode:
            sys.exit(run.stdout[-3000:] + run.stderr[-3000:])
        for pattern in RESULTS:
            for path in sorted(p for p in repo.glob(pattern) if p.name != "seconds.tsv"):
                digest = hashlib.sha256(_comparable(path)).hexdigest()[:16]
                print(f"{digest}  {path.relative_to(repo)}")


if __name__ == "__main__":
    main()
