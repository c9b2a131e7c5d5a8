"""Seconds per training step by how the batches are read: per item in the training process, as
the loop read them before its DataLoader, against the DataLoader with 0, 1 and 2 worker processes
(``train(loader_workers=...)``, :func:`ouroboros3d.training.batches.training_batches`).

    .venv/bin/python benchmarks/bench_loader.py                 # params.yaml (cpu-small), 8 steps a run
    .venv/bin/python benchmarks/bench_loader.py --steps 12 --repeats 3

The data: the train split of ``--data`` (the render and ccm stages' output) when it is there,
else ``--objects`` meshes (boxes and spheres, the ``folder`` source) rendered, and their CCMs
written, at the params' resolution and views into a temporary folder. Every run trains the same fresh model for
``--steps`` steps of ``train`` (the joint fine-tune: its batch size, its objective); a step's
time runs from one step's end to the next (``on_step``), the first step (set-up, the workers'
start, the first read) and the last (its checkpoint) left out. The modes take turns,
``--repeats`` rounds, so a load that comes and goes falls on all of them; each mode's figure is
the median over all its steps.

``per-item`` is the reading the loop did before the DataLoader: every item whole (its depth read,
its CCM and Plücker rays computed), one after another in the training process as its step
begins. The DataLoader's items are the keys training reads alone (no depth, CCM or rays).
Also printed: what reading one step's batch costs on its own, whole items against training's,
and how long the training process waits for each batch with a stand-in step between batches
(matmuls): the loader's own share of a step, which the step times' noise on a shared machine hides.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import torch
import trimesh
from torch.utils.data import Dataset

from ouroboros3d.build import build_model
from ouroboros3d.config import load_params
from ouroboros3d.data import MultiViewDataset, render_dataset, write_ccms
from ouroboros3d.errors import UserError
from ouroboros3d.training.batches import BATCH_KEYS, batch_plan, training_batches
from ouroboros3d.training.loop import train

MODES = {"per-item": 0, "loader-0": 0, "loader-1": 1, "loader-2": 2}
STAND_IN_MATMULS = 64  # 1024² each: about a second on 2 cores, as a cpu-small step


class WholeItems(Dataset):
    """The dataset's items whole, as ``dataset[i]`` gives them (what the loop read before)."""

    def __init__(self, dataset: MultiViewDataset):
        self.dataset, self.object_ids = dataset, dataset.object_ids

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return self.dataset[index]


def render_split(params, root: Path, objects: int) -> MultiViewDataset:
    """``objects`` boxes and spheres rendered and their CCMs written as the render and ccm stages do, at the params'
    resolution and views."""
    (root / "meshes").mkdir(parents=True)
    for k in range(objects):
        mesh = trimesh.creation.box(extents=(1.0, 0.3 + 0.1 * k, 0.4)) if k % 2 else trimesh.creation.icosphere(2)
        mesh.export(root / "meshes" / f"mesh{k:02d}.obj")
    data = dataclasses.replace(
        params.data,
        folder=str(root / "meshes"),
        workers=1,
        train=dataclasses.replace(params.data.train, source="folder", max_objects=objects, real_objects=0),
    )
    render_dataset(dataclasses.replace(params, data=data), root / "renders", splits=("train",), progress=False)
    write_ccms(root / "renders", root / "ccm", params.ccm.normalization, splits=("train",), progress=False)
    return MultiViewDataset.for_split("train", root, params.ccm.normalization)


def read_seconds(dataset: MultiViewDataset, batch_size: int, whole: bool, repeats: int = 20) -> float:
    """Median seconds to read one step's ``batch_size`` items, whole or training's keys alone."""
    times = []
    for r in range(repeats):
        start = time.perf_counter()
        for i in range(batch_size):
            index = (r * batch_size + i) % len(dataset)
            _ = dataset[index] if whole else dataset.item(index, BATCH_KEYS)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def wait_seconds(dataset, settings, seed: int, workers: int, steps: int) -> list[float]:
    """How long the training process waits for each step's batch while it computes a stand-in step
    between them (1024² matmuls on all its threads, about as long as a cpu-small step), the first left out."""
    plan = batch_plan(dataset, settings.batch_size, settings.real_share)
    positions = range(settings.batch_size)
    batches = training_batches(dataset, plan, seed, range(steps), positions, "cpu", workers)
    a = torch.randn(1024, 1024, generator=torch.Generator().manual_seed(0))
    waits = []
    for _ in range(steps):
        start = time.perf_counter()
        next(batches)
        waits.append(time.perf_counter() - start)
        for _ in range(STAND_IN_MATMULS):
            torch.mm(a, a)
    return waits[1:]


def step_seconds(params, dataset, settings, workers: int, folder: Path) -> list[float]:
    """The times of a fresh run's steps but its first and last."""
    torch.manual_seed(params.seed)
    model = build_model(params)
    marks = []

    def on_step(done: int, values: dict) -> None:
        marks.append(time.perf_counter())

    train(
        model, dataset, settings, folder / "ckpt", folder / "log", seed=params.seed, fingerprint="bench",
        progress=False, on_step=on_step, loader_workers=workers,
    )  # fmt: skip
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()  # the next run's Accelerator starts afresh
    return [b - a for a, b in itertools.pairwise(marks[:-1])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data", help="the data/ folder of the render and ccm stages")
    parser.add_argument("--objects", type=int, default=8, help="objects to render when --data has no train split")
    parser.add_argument("--steps", type=int, default=8, help="training steps per run (2 more than are timed)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of the modes")
    args = parser.parse_args()
    params = load_params(args.params)
    settings = dataclasses.replace(params.train, steps=args.steps, log_every=args.steps)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if (Path(args.data) / "renders" / "train").is_dir():
            dataset = MultiViewDataset.for_split("train", args.data, params.ccm.normalization)
            source = f"{args.data}/renders/train"
        else:
            dataset = render_split(params, tmp / "data", args.objects)
            source = f"{args.objects} meshes rendered into a temporary folder"
        try:
            batch_plan(dataset, settings.batch_size, settings.real_share)
        except UserError:  # no procedural objects (a folder of meshes): no share to draw
            settings = dataclasses.replace(settings, real_share=None)
        views, height, width = next(iter(dataset.shapes.values()))
        print(
            f"preset {params.preset}: {len(dataset)} objects ({source}), {views} views of {width}x{height}, "
            f"batch {settings.batch_size}, {torch.get_num_threads()} torch threads"
        )
        whole, keys = (read_seconds(dataset, settings.batch_size, w) for w in (True, False))
        print(f"reading a step's batch alone: whole items {whole * 1e3:.1f} ms, training's keys {keys * 1e3:.1f} ms")
        waits: dict[str, list[float]] = {mode: [] for mode in MODES}
        for _ in range(args.repeats):
            for mode, workers in MODES.items():
                data = WholeItems(dataset) if mode == "per-item" else dataset
                waits[mode] += wait_seconds(data, settings, params.seed, workers, args.steps)
        print(f"{'mode':<10} {'wait for a batch, ms (median)':>30} {'max':>7}  steps")
        for mode, t in waits.items():
            print(f"{mode:<10} {statistics.median(t) * 1e3:>30.2f} {max(t) * 1e3:>7.2f}  {len(t)}")
        times: dict[str, list[float]] = {mode: [] for mode in MODES}
        for r in range(args.repeats):
            for mode, workers in MODES.items():
                data = WholeItems(dataset) if mode == "per-item" else dataset
                times[mode] += step_seconds(params, data, settings, workers, tmp / f"{mode}-{r}")
        print(f"{'mode':<10} {'s/step (median)':>16} {'min':>7} {'max':>7}  steps")
        for mode, t in times.items():
            print(f"{mode:<10} {statistics.median(t):>16.3f} {min(t):>7.3f} {max(t):>7.3f}  {len(t)}")


if __name__ == "__main__":
    main()
