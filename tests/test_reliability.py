"""What a failed or concurrent training run leaves (issue 19): no log folder from a run that
failed at its start, one run per checkpoint folder (a lock that a dead owner does not hold, nor
its loader workers), a damaged file's own one-line error from a loader worker, and progress that
a log file can hold (plain lines, not a carriage return per step)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import CHILD_ENV, SyntheticDataset, tiny_params

from ouroboros3d import progress
from ouroboros3d.build import build_model
from ouroboros3d.data.layout import CorruptObjectError
from ouroboros3d.errors import UserError
from ouroboros3d.training.loop import train
from ouroboros3d.training.state import own_checkpoints


def _train(tmp_path, params, **kw):
    torch.manual_seed(0)
    dataset = kw.pop("dataset", None) or SyntheticDataset(params)
    settings = dataclasses.replace(params.train, steps=2, log_every=1, checkpoint_every=1)
    return train(
        build_model(params), dataset, settings, tmp_path / "ckpt", tmp_path / "log", seed=0, fingerprint="f",
        progress=False, **kw,
    )  # fmt: skip


def test_a_run_that_fails_at_its_start_leaves_no_log_folder(tmp_path):
    params = tiny_params(train={"real_share": 0.5})
    procedural_only = SyntheticDataset(params)
    procedural_only.object_ids = [f"random_urdfs-{i:03d}" for i in range(len(procedural_only))]
    with pytest.raises(UserError, match="the training split has none"):
        _train(tmp_path, params, dataset=procedural_only, log_params={"objects": 4})
    assert not (tmp_path / "log").exists()
    # ... while a run that logs writes its log, params included
    _train(tmp_path, params, log_params={"objects": 4})
    assert (tmp_path / "log" / "metrics.json").exists() and (tmp_path / "log" / "params.yaml").exists()


def test_one_run_owns_a_checkpoint_folder_and_a_dead_owner_holds_nothing(tmp_path):
    folder = tmp_path / "ckpt"
    holder = (
        "import sys, time; from filelock import FileLock; "
        "lock = FileLock(sys.argv[1]); lock.acquire(); print('held', flush=True); time.sleep(600)"
    )
    folder.mkdir()
    other = subprocess.Popen(
        [sys.executable, "-c", holder, str(folder / ".lock")],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ | CHILD_ENV,
    )
    try:
        assert other.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match="is in use by another training run"):
            _train(tmp_path, tiny_params())
        assert not (folder / "last.safetensors").exists()  # refused before anything was written
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait(timeout=60)
    summary = _train(tmp_path, tiny_params())  # the killed owner held nothing
    assert summary["finished"] and (folder / "last.safetensors").exists()
    with own_checkpoints(folder), pytest.raises(UserError):  # and the finished run released it
        with own_checkpoints(folder):
            pass


# a run that holds its checkpoint folder and has a loader worker busy reading (a read that never ends)
LOADING_RUN = """
import multiprocessing, sys, time
from pathlib import Path

import torch

from ouroboros3d.training.batches import BATCH_KEYS, training_batches
from ouroboros3d.training.state import own_checkpoints


class Items(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        if i:
            time.sleep(600)
        return {k: torch.zeros(1) for k in BATCH_KEYS}


with own_checkpoints(Path(sys.argv[1])):
    batches = training_batches(Items(), lambda step, seed: [min(step, 1)], 0, range(10), [0], "cpu", workers=1)
    next(batches)
    print(*[p.pid for p in multiprocessing.active_children()], flush=True)
    time.sleep(600)
"""


def _running(pid: int) -> bool:
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in "ZX"  # not a zombie: its process state


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads process states from /proc")
def test_a_killed_runs_loader_workers_hold_no_checkpoint_lock(tmp_path):
    folder = tmp_path / "ckpt"
    run = subprocess.Popen(
        [sys.executable, "-c", LOADING_RUN, str(folder)], stdout=subprocess.PIPE, text=True, env=os.environ | CHILD_ENV
    )
    workers: list[int] = []
    try:
        workers = [int(pid) for pid in run.stdout.readline().split()]
        assert len(workers) == 1
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=60)
        with own_checkpoints(folder):  # at once: the worker, forked while the run held the lock, holds nothing
            assert _running(workers[0])  # though it still runs (torch's watchdog ends it at its next look)
    finally:
        for pid in [run.pid, *workers]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        run.wait(timeout=60)


class _Damaged(SyntheticDataset):
    def __getitem__(self, i):
        raise CorruptObjectError(f"rendered object '{i}': a file in {i} cannot be read (truncated); re-render it")


def test_a_file_damaged_during_training_stops_it_with_its_own_error(tmp_path):
    # read in a loader worker, raised in the training process as it was raised: one line, no traceback
    params = tiny_params()
    with pytest.raises(CorruptObjectError) as error:
        _train(tmp_path, params, dataset=_Damaged(params))
    assert str(error.value).endswith("cannot be read (truncated); re-render it")
    assert str(error.value).startswith("rendered object '") and "\n" not in str(error.value)


def test_progress_in_a_log_is_plain_lines_a_minute_apart():
    log = io.StringIO()
    bar = progress.bar(range(1000), total=1000, desc="train", file=log)
    for _ in bar:
        pass
    bar.close()
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert 1 <= len(lines) <= 3, lines  # the start and the end: the loop took well under a minute
    assert "1000/1000" in lines[-1]


def test_progress_in_a_log_writes_a_line_per_interval(monkeypatch):
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.05)
    log = io.StringIO()
    with progress.bar(total=10, desc="eval", file=log) as bar:
        for _ in range(10):
            time.sleep(0.03)
            bar.update(1)
    lines = log.getvalue().splitlines()
    assert 3 <= len(lines) <= 8, lines  # about every other update: 10 x 30 ms at a 50 ms interval
    assert all(line.startswith("eval:") for line in lines)


def test_a_bar_that_sets_its_postfix_every_step_still_logs_a_line_a_minute():
    log = io.StringIO()
    bar = progress.bar(range(500), total=500, desc="train", file=log)
    for i in bar:
        bar.set_postfix({"loss": f"{1 / (i + 1):.4f}"})  # redraws at every call
        if i == 250:
            bar.write("step 250: mv_psnr 17.00", file=bar.fp)  # a message through the bar passes as it is
    bar.close()
    lines = log.getvalue().splitlines()
    assert "step 250: mv_psnr 17.00" in lines
    assert len(lines) <= 5, lines  # the first state, the message (and the state beside it), the last
    assert "500/500" in lines[-1]
