"""Distributed training is the same training: how a batch is split over ranks changes nothing.

Each sample's draws (recolouring, sigma, noise, conditioning dropout) come from a generator of
(seed, step, its index in the step's global batch) and the second-pass coin from (seed, step)
(:func:`ouroboros3d.training.batches.step_draws`). The cheap tests check that in-process; the slow ones
run the tiny config under ``accelerate launch --config_file configs/accelerate/cpu_2proc.yaml``
(2 gloo CPU ranks): 2 ranks x batch 1 against 1 process x batch 2, and a 2-rank run killed with
SIGKILL after a checkpoint, then resumed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import CHILD_ENV, ROOT, synthetic_batch, tiny_params
from safetensors.torch import load_file

from ouroboros3d.build import build_model
from ouroboros3d.model import Draws, _noise_draws, recolour
from ouroboros3d.training.batches import batch_indices, step_draws
from ouroboros3d.training.state import checkpoint_metadata

# 1 process x batch 2 against 2 gloo ranks x batch 1: the same arithmetic but for float rounding
# (a batch of 2 against two batches of 1 in the convolutions, the all-reduce of the gradients).
# The 2-rank runs are in float64: AdamW divides each gradient by its own running size, so in
# float32 the rounding in a gradient near zero becomes a step of up to lr (measured, 6 steps at
# lr 1e-3: weights 2.6e-3 apart, losses 4e-5). In float64, measured: losses <= 1.1e-13 apart,
# weights <= 5.3e-11. The in-process loss checks run in float32.
ATOL = 1e-9
# a guard against a hung run, not a speed goal: alone, a tiny 2-rank run takes 15-50 s (measured
# beside a 2-thread matmul loop on 2 cores: 41-50 s, 8 runs)
LAUNCH_TIMEOUT = 420
# CI twice saw a 2-rank run never end: a deadlock in training's teardown (fixed in
# training/loop.py, checked by every run below). A run that passes the guard fails with the stacks
# of its ranks and its launcher (faulthandler), so any other hang says where it is.
ATOL_FLOAT32 = 1e-6


def _split(positions):
    return [positions[r::2] for r in range(2)]


def test_each_samples_draws_do_not_depend_on_the_batch_split():
    params = tiny_params()
    batch = synthetic_batch(params, 4, seed=1)
    x = batch["views"]
    whole = list(range(4))
    draws = step_draws(7, 3, whole)  # as in training: recolouring, then sigma, noise and dropout
    full = recolour(batch, draws)
    sigma, noise, drop = _noise_draws(x, draws, 1.0, 1.6, (0.3, -1.0, 1.0), 0.5)
    for part in _split(whole):
        sub = {k: v[part] for k, v in batch.items()}
        draws = step_draws(7, 3, part)
        torch.testing.assert_close(recolour(sub, draws)["views"], full["views"][part], rtol=0, atol=0)
        s, n, d = _noise_draws(sub["views"], draws, 1.0, 1.6, (0.3, -1.0, 1.0), 0.5)
        torch.testing.assert_close(s, sigma[part], rtol=0, atol=0)
        torch.testing.assert_close(n, noise[part], rtol=0, atol=0)
        assert torch.equal(d, drop[part])
    # the draws are the sample's own: another position, step or seed draws otherwise
    s0 = _noise_draws(x[:1], step_draws(7, 3, [0]), 1.0, 1.6, None, 0.5)[1]
    for other in (step_draws(7, 3, [1]), step_draws(7, 4, [0]), step_draws(8, 3, [0])):
        assert not torch.equal(_noise_draws(x[:1], other, 1.0, 1.6, None, 0.5)[1], s0)
    # the step's coin is the same on every rank
    coins = [torch.rand((), generator=step_draws(7, 3, p).step) for p in _split(whole)]
    assert coins[0] == coins[1]


@pytest.mark.parametrize("objective", ["joint", "denoiser", "reconstructor"])
def test_a_batchs_loss_is_the_mean_of_its_shares_losses(objective):
    # what DDP averages: each rank's loss on its share of the global batch, with its draws
    params = tiny_params(joint=objective != "reconstructor", feedback=objective == "joint")
    torch.manual_seed(0)
    model = build_model(params)
    batch = synthetic_batch(params, 2, seed=2)
    kw = dict(objective=objective, feedback_prob=1.0, cond_dropout=0.5, noise_mixture=(0.5, -1.0, 1.0))
    with torch.no_grad():
        whole = model(batch, step_draws(0, 5, [0, 1]), **kw)
        shares = [model({k: v[[j]] for k, v in batch.items()}, step_draws(0, 5, [j]), **kw) for j in (0, 1)]
    for key in ("loss", "loss_mv", "loss_recon"):
        if key in whole:
            mean = (shares[0][key] + shares[1][key]) / 2
            torch.testing.assert_close(whole[key], mean, rtol=0, atol=ATOL_FLOAT32)


def test_draws_must_match_the_batch():
    params = tiny_params()
    with pytest.raises(ValueError, match="1 sample generators for a batch of 2"):
        recolour(synthetic_batch(params, 2), step_draws(0, 0, [0]))
    # a plain generator still serves a whole batch (sampling, tests)
    assert len(Draws.of(torch.Generator(), 3).samples) == 3


# --- 2 gloo ranks ------------------------------------------------------------------------------

DRIVER = """
import faulthandler, gc, json, os, signal, sys, time
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from torch.nn.parallel import DistributedDataParallel
from conftest import SyntheticDataset, tiny_params
from safetensors.torch import save_file

from ouroboros3d.build import build_model, training_fingerprint
from ouroboros3d.training.loop import train

out, batch_size, pause_at, objective = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rank = int(os.environ.get("RANK", "0"))
faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test's hang guard asks for the stacks


def end_training(self, _end=Accelerator.end_training):
    # what is alive as the process group is destroyed: a DDP wrapper here would hold the group
    # past it, and its Reducer would destroy it with the GIL held (training.py: a deadlock)
    alive = any(isinstance(o, DistributedDataParallel) for o in gc.get_objects())
    (out / f"ddp_at_end_training.{rank}").write_text(json.dumps(alive))
    _end(self)


Accelerator.end_training = end_training
# float64: AdamW turns float32 rounding in a near-zero gradient into a step of size lr
torch.set_default_dtype(torch.float64)
out.mkdir(parents=True, exist_ok=True)
(out / f"pid.{rank}").write_text(str(os.getpid()))
params = tiny_params(train={"batch_size": batch_size, "recolour": True})  # 6 steps, checkpoint every 2
if objective != "joint":  # a pretraining objective, as experiments/train.py --pretrain sets it up
    params = tiny_params(feedback=False, train={"batch_size": batch_size, "steps": 2})
torch.manual_seed(0)
model = build_model(params)
losses = {}


def on_step(done, values):
    losses[done] = values
    if done == pause_at and rank == 0:  # wait here to be killed: the checkpoint of step 2 is written
        (out / "paused").write_text(str(done))
        time.sleep(600)


dataset = SyntheticDataset(params)
dataset.items = [{k: v.double() if v.is_floating_point() else v for k, v in it.items()} for it in dataset.items]
summary = train(
    model, dataset, params.train, out / "ckpt", out / "log", seed=params.seed,
    fingerprint=training_fingerprint(params), progress=False, on_step=on_step, objective=objective,
)
if PartialState().is_main_process:
    tensors = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    tensors |= {f"ema.{k}": v.contiguous() for k, v in summary["ema"].shadow.items()}
    save_file(tensors, str(out / "final.safetensors"))
    (out / "losses.json").write_text(json.dumps(losses))
# Everything is written and closed: leave without the interpreter's teardown, which once hung a
# CI run for minutes after both ranks had finished (gloo/atexit after end_training). This test
# is about what training computes, not about process teardown.
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
"""

ENV = os.environ | CHILD_ENV | {"CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT / "tests")}


def _command(driver: Path, out: Path, batch_size: int, ranks: int, pause_at: int = 0, objective="joint") -> list[str]:
    args = [str(driver), str(out), str(batch_size), str(pause_at), objective]
    if ranks == 1:
        return [sys.executable, *args]
    config = ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"
    # `accelerate launch`, in an interpreter whose stacks a SIGABRT prints (the torchrun agent runs in it)
    return [sys.executable, "-X", "faulthandler", "-c", LAUNCHER, "launch", "--config_file", str(config), *args]


LAUNCHER = "import sys; from accelerate.commands.accelerate_cli import main; sys.argv[0] = 'accelerate'; main()"


def _start(command: list[str], out: Path) -> subprocess.Popen:
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("pid.*"):  # each rank writes its pid as it starts
        stale.unlink()
    with (out / "launch.log").open("w") as log:  # a file, not a pipe: nothing blocks on a full pipe
        return subprocess.Popen(command, stdout=log, stderr=log, env=ENV, cwd=ROOT, start_new_session=True)


def _log(out: Path) -> str:
    return (out / "launch.log").read_text()[-3000:]


def _signal_ranks(out: Path, sig: int) -> None:
    for path in out.glob("pid.*"):  # each rank wrote its pid as it started
        try:
            os.kill(int(path.read_text()), sig)
        except (ProcessLookupError, ValueError):
            pass


def _kill(launcher: subprocess.Popen, out: Path) -> None:
    """SIGKILL the ranks (torchrun starts each in a session of its own), then the launcher."""
    _signal_ranks(out, signal.SIGKILL)
    if launcher.poll() is None:
        os.killpg(launcher.pid, signal.SIGKILL)
    launcher.wait(timeout=60)


def _dump_and_kill(launcher: subprocess.Popen, out: Path) -> str:
    """A hung run: its ranks' stacks (SIGUSR1), its launcher's (SIGABRT), then nothing left running."""
    _signal_ranks(out, signal.SIGUSR1)
    time.sleep(2)
    if launcher.poll() is None:
        launcher.send_signal(signal.SIGABRT)
        time.sleep(2)
    _kill(launcher, out)
    return (out / "launch.log").read_text()[-12000:]


def _run(driver: Path, out: Path, batch_size: int, ranks: int, objective="joint") -> tuple[dict, dict]:
    """Run (or resume, where ``out`` holds a checkpoint) the driver to its end."""
    launcher = _start(_command(driver, out, batch_size, ranks, objective=objective), out)
    try:
        launcher.wait(timeout=LAUNCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{out.name}: the run passed {LAUNCH_TIMEOUT} s; its stacks:\n{_dump_and_kill(launcher, out)}")
    assert launcher.returncode == 0, _log(out)
    at_end = {path.name: json.loads(path.read_text()) for path in out.glob("ddp_at_end_training.*")}
    assert len(at_end) == ranks and not any(at_end.values()), f"a DDP wrapper outlived training: {at_end}"
    losses = {int(k): v for k, v in json.loads((out / "losses.json").read_text()).items()}
    return losses, load_file(str(out / "final.safetensors"))


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    path = tmp_path_factory.mktemp("driver") / "driver.py"
    path.write_text(DRIVER)
    return path


@pytest.fixture(scope="module")
def two_ranks(driver, tmp_path_factory):
    """The uninterrupted 2-rank run, batch 1 per rank: (losses by step, final weights and EMA)."""
    return _run(driver, tmp_path_factory.mktemp("two_ranks"), batch_size=1, ranks=2)


def _assert_same(a: dict, b: dict, atol: float) -> float:
    assert a.keys() == b.keys()
    worst = 0.0
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)
        worst = max(worst, float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0)
    return worst


@pytest.mark.slow
def test_two_ranks_of_batch_1_train_as_one_process_of_batch_2(driver, two_ranks, tmp_path):
    # the ranks really hold different objects
    global_batch = [batch_indices(4, 2, s, seed=0) for s in range(6)]  # SyntheticDataset: 4 objects
    assert any(b[0] != b[1] for b in global_batch)
    losses2, final2 = two_ranks
    losses1, final1 = _run(driver, tmp_path / "one", batch_size=2, ranks=1)
    assert sorted(losses1) == sorted(losses2) == list(range(1, 7))
    assert all(losses1[step].keys() == losses2[step].keys() for step in losses1)
    gaps = [abs(losses1[step][k] - losses2[step][k]) for step in losses1 for k in losses1[step]]
    worst = _assert_same(final1, final2, ATOL)
    print(f"1 x batch 2 against 2 x batch 1: losses differ by <= {max(gaps):.1e}, weights by <= {worst:.1e}")
    assert max(gaps) <= ATOL


def _wait_for_pause(launcher: subprocess.Popen, out: Path) -> None:
    """Until rank 0 waits after step 3 (its checkpoint of step 2 written) and rank 1 has started."""
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    while not ((out / "paused").exists() and (out / "pid.1").exists()):
        assert launcher.poll() is None, _log(out)
        assert time.monotonic() < deadline, "the 2-rank run never reached step 3"
        time.sleep(0.2)


def _assert_resumes_as_the_uninterrupted_run(driver: Path, out: Path, two_ranks) -> None:
    losses, final = _run(driver, out, batch_size=1, ranks=2)  # the same command resumes
    assert sorted(losses) == [3, 4, 5, 6]  # from the checkpoint of step 2
    for step in losses:
        assert losses[step] == two_ranks[0][step], step
    _assert_same(final, two_ranks[1], atol=0)


@pytest.mark.slow
def test_a_two_rank_run_killed_and_resumed_ends_as_the_uninterrupted_one(driver, two_ranks, tmp_path):
    out = tmp_path / "killed"
    launcher = _start(_command(driver, out, 1, ranks=2, pause_at=3), out)
    try:
        _wait_for_pause(launcher, out)
    finally:
        # rank 0 waits after step 3, rank 1 in step 4's all-reduce: SIGKILL both ranks, then the launcher
        _kill(launcher, out)
    assert not (out / "final.safetensors").exists()
    assert checkpoint_metadata(out / "ckpt" / "last.safetensors")["step"] == "2"  # step 3 is lost

    _assert_resumes_as_the_uninterrupted_run(driver, out, two_ranks)


@pytest.mark.slow
def test_a_pretraining_objective_trains_on_two_ranks(driver, tmp_path):
    # F alone leaves G without gradients: DDP must be told (find_unused_parameters) or step 2 raises
    losses, final = _run(driver, tmp_path / "denoiser", batch_size=1, ranks=2, objective="denoiser")
    assert sorted(losses) == [1, 2]
    torch.manual_seed(0)
    torch.set_default_dtype(torch.float64)  # the driver's initial weights
    try:
        start = build_model(tiny_params(feedback=False)).state_dict()
    finally:
        torch.set_default_dtype(torch.float32)
    changed = {k.split(".")[1] for k, v in final.items() if k.startswith("model.") and not torch.equal(v, start[k[6:]])}
    assert changed == {"denoiser"}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (dead, not yet reaped by init) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


@pytest.mark.slow
def test_ranks_die_with_a_killed_launcher_and_a_relaunch_resumes_exactly(driver, two_ranks, tmp_path):
    out = tmp_path / "orphans"
    launcher = _start(_command(driver, out, 1, ranks=2, pause_at=3), out)
    try:
        _wait_for_pause(launcher, out)
        ranks = [int((out / f"pid.{r}").read_text()) for r in range(2)]
        launcher.send_signal(signal.SIGKILL)  # the launcher alone: its ranks must follow it
        launcher.wait(timeout=60)
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in ranks) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in ranks), f"ranks {ranks} outlived their launcher"
    finally:
        _kill(launcher, out)
    assert not (out / "final.safetensors").exists()
    _assert_resumes_as_the_uninterrupted_run(driver, out, two_ranks)
