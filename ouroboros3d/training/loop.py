"""Joint training loop (Algorithm 1) with accelerate, EMA, and exact resume.

Every source of randomness in a step is derived from ``(seed, step)``: the batch's object
indices and the :class:`ouroboros3d.model.Draws` passed to :func:`ouroboros3d.model.training_losses`
(each sample's generator also from its index in the step's global batch; both in
:mod:`ouroboros3d.training.batches`). A run killed at any point and resumed from its last
checkpoint (weights, EMA, optimizer state, all in one safetensors file written atomically:
:mod:`ouroboros3d.training.state`) therefore continues exactly as the uninterrupted run would have.

Distributed (``accelerate launch``, one process per device): rank r trains on positions
r, r + world, ... of the step's global batch of ``batch_size * world`` objects, each with the
draws of its global position, so how a batch is split over ranks changes nothing but float
rounding. Only rank 0 writes logs and checkpoints; every rank resumes from the same one.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from ..config import TrainSettings
from ..model import LossWeights, Ouroboros3D, recolour
from ..progress import bar as progress_bar
from .batches import LOADER_WORKERS, batch_plan, step_draws, training_batches
from .state import EMA, checkpoint_metadata, load_training_state, own_checkpoints, save_training_state
from .tracking import RunLog

__all__ = ["die_with_launcher", "lr_schedule", "train"]

LOG_FIELDS = ("step", "loss", "loss_mv", "loss_recon", "loss_rgb", "loss_alpha", "lr", "seconds")


def lr_schedule(optimizer: torch.optim.Optimizer, settings: TrainSettings, step: int) -> LambdaLR:
    """The lr schedule (:func:`_lr_factor`) as torch's ``LambdaLR``, set for training step ``step``.

    Not passed to ``accelerator.prepare``: accelerate would step it once per process.
    """
    for group in optimizer.param_groups:  # a checkpoint of before the schedule was a LambdaLR has none
        group.setdefault("initial_lr", settings.lr)
    return LambdaLR(optimizer, lambda s: _lr_factor(s, settings), last_epoch=step - 1)


def _lr_factor(step: int, settings: TrainSettings) -> float:
    """Linear warm-up, constant, then cosine decay to 10% over the last ``lr_decay_fraction`` of the steps."""
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    decay_start = max(settings.warmup_steps, round(settings.steps * (1 - settings.lr_decay_fraction)))
    if step < decay_start:
        return 1.0
    progress = (step - decay_start) / max(1, settings.steps - decay_start)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _validate_ema(model: nn.Module, ema: EMA, validate: Callable[[nn.Module], dict]) -> dict:
    """``validate`` on a copy of ``model`` holding the EMA weights (the weights that get shipped)."""
    shadow = copy.deepcopy(model)
    ema.copy_to(shadow)
    return validate(shadow)


def die_with_launcher() -> None:
    """Under a launcher (``accelerate launch``/torchrun set ``LOCAL_RANK``), end this rank soon
    after the launcher is gone: a killed launcher must not leave ranks training on as orphans
    (they would finish and write the model while a relaunch trains on the same checkpoint). The
    rank's loader workers end with it (torch's worker watchdog)."""
    if "LOCAL_RANK" not in os.environ:
        return
    launcher = os.getppid()

    def watch():
        while os.getppid() == launcher:  # an orphan is adopted by init or a subreaper
            time.sleep(1.0)
        print(f"rank {os.environ.get('RANK', '?')}: the launcher is gone; stopping", file=sys.stderr, flush=True)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-launcher", daemon=True).start()


def train(
    model: Ouroboros3D,
    dataset,
    settings: TrainSettings,
    checkpoint_dir: Path,
    log_dir: Path,
    *,
    seed: int,
    fingerprint: str,
    lpips: nn.Module | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    on_step: Callable[[int, dict], None] | None = None,
    objective: str = "joint",
    validate: Callable[[nn.Module], dict] | None = None,
    validate_every: int = 0,
    log_params: dict | None = None,
    loader_workers: int = LOADER_WORKERS,
) -> dict:
    """Train ``model`` for ``settings.steps`` steps, resuming from ``checkpoint_dir/last.safetensors``.

    A checkpoint whose fingerprint (a hash of the params that shape training) differs is
    not resumed: training starts over and says so. ``stop_after`` ends the run early after
    that many steps of this call (tests use it to simulate a kill). ``validate(model)``, if
    given, scores the EMA weights at the end and every ``validate_every`` steps (0: only at the end).
    The losses and the validation scores (a learning curve) go to the dvclive directory ``log_dir``
    (:class:`ouroboros3d.training.tracking.RunLog`), with ``log_params`` as its params. ``loader_workers``
    processes read the batches ahead of the steps (0: this process reads each as its step begins;
    :func:`ouroboros3d.training.batches.training_batches`): how many changes no number. Returns a summary.
    """
    from accelerate import Accelerator, DistributedDataParallelKwargs

    # F or G alone leaves the other's parameters without gradients, which DDP must be told
    ddp = DistributedDataParallelKwargs(find_unused_parameters=objective != "joint")
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(), mixed_precision=settings.mixed_precision, kwargs_handlers=[ddp]
    )
    die_with_launcher()
    checkpoint_dir = Path(checkpoint_dir)
    with own_checkpoints(checkpoint_dir) if accelerator.is_main_process else contextlib.nullcontext():
        last = checkpoint_dir / "last.safetensors"
        model.to(accelerator.device)
        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=settings.lr, weight_decay=settings.weight_decay
        )
        ema = EMA(model, settings.ema_decay)
        scaler = accelerator.scaler  # fp16 only; None otherwise
        start, before = 0, 0.0  # before: the seconds the resumed steps took (the checkpoints of old lack them)
        if last.exists():
            meta = checkpoint_metadata(last)
            if meta.get("fingerprint") == fingerprint:
                start = load_training_state(last, model, ema, optimizer, accelerator.device, scaler)
                before = float(meta.get("seconds", 0.0))
                accelerator.print(f"resuming from {last} at step {start}")
            else:
                accelerator.print(f"{last} was written with other params: training from scratch")
        # rank 0 logs; rows after the resumed checkpoint (steps to be redone) are dropped
        log = RunLog(log_dir, start, enabled=accelerator.is_main_process)
        if log_params:
            log.log_params(log_params)

        model, optimizer = accelerator.prepare(model, optimizer)
        schedule = lr_schedule(optimizer, settings, start)
        weights = LossWeights(settings.recon_weight, settings.alpha_weight, settings.lpips_weight)
        world, rank = accelerator.num_processes, accelerator.process_index
        plan = batch_plan(dataset, settings.batch_size * world, settings.real_share)
        positions = range(rank, settings.batch_size * world, world)  # this rank's share of the global batch
        end = settings.steps if stop_after is None else min(settings.steps, start + stop_after)
        steps = range(start, end)
        batches = training_batches(dataset, plan, seed, steps, positions, accelerator.device, loader_workers)
        bar = progress_bar(steps, initial=start, total=settings.steps, disable=not progress or rank, desc="train")
        t0 = time.perf_counter() - before  # the logged seconds count the whole run, across resumes
        losses: dict = {}
        model.train()
        try:
            for step, batch in zip(bar, batches, strict=True):
                generator = step_draws(seed, step, positions)
                if settings.recolour:
                    batch = recolour(batch, generator)
                with accelerator.autocast():
                    losses = model(
                        batch,
                        generator,
                        objective=objective,
                        feedback_prob=settings.feedback_prob,
                        cond_dropout=settings.cond_dropout,
                        p_mean=settings.p_mean,
                        p_std=settings.p_std,
                        noise_mixture=settings.noise_mixture,
                        weights=weights,
                        lpips=lpips,
                    )
                if not torch.isfinite(losses["loss"]):
                    raise FloatingPointError(f"loss is {losses['loss'].item()} at step {step}; last checkpoint kept")
                optimizer.zero_grad(set_to_none=True)
                accelerator.backward(losses["loss"])
                accelerator.clip_grad_norm_(model.parameters(), settings.grad_clip)
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                schedule.step()
                ema.update(accelerator.unwrap_model(model))
                # the global batch's mean over ranks (each rank's loss is its share's mean)
                mean = accelerator.reduce({k: v.detach() for k, v in losses.items()}, "mean")
                values = {k: float(v) for k, v in mean.items()}
                bar.set_postfix({k.removeprefix("loss_"): f"{values[k]:.4f}" for k in LOG_FIELDS if k in values})
                done = step + 1
                if rank == 0 and (done % settings.log_every == 0 or done == settings.steps):
                    row = {k: values[k] for k in LOG_FIELDS if k in values}
                    row |= {"lr": lr, "seconds": round(time.perf_counter() - t0, 3)}
                    log.log_step(done, row)
                due = done == settings.steps or (validate_every and done % validate_every == 0)
                if rank == 0 and validate is not None and due:
                    scores = _validate_ema(accelerator.unwrap_model(model), ema, validate)
                    log.log_val(done, scores)
                    bar.write(f"step {done}: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()))
                if rank == 0 and (done % settings.checkpoint_every == 0 or done == settings.steps):
                    seconds = time.perf_counter() - t0
                    save_training_state(
                        last, accelerator.unwrap_model(model), ema, optimizer, done, fingerprint, scaler, seconds
                    )
                if on_step is not None:
                    on_step(done, values)
            log.close(steps=end, finished=end == settings.steps, seconds=round(time.perf_counter() - t0, 3))
        finally:
            log.close()  # an exception's way out: what was logged is kept (a no-op after the close above)
            bar.close()
            batches.close()  # and the loader's workers end now, not when the exception is gone
        accelerator.wait_for_everyone()
        # The DDP wrapper goes before the process group. Its Reducer holds the group; were it the
        # last holder, the group's destructor would run inside the Reducer's, with the GIL held,
        # and join gloo's worker threads while one of them waits for the GIL to free the last
        # collective's tensors: a deadlock (seen: 1 of 8 two-rank runs under load, twice in CI).
        # Released here, the group dies in end_training, whose destructor lets the GIL go.
        del model
        accelerator.free_memory()
        accelerator.end_training()  # destroys the process group: one train() per distributed process
        return {
            "steps": end,
            "finished": end == settings.steps,
            "seconds": time.perf_counter() - t0,
            "final_losses": {k: float(v.detach()) for k, v in losses.items()},
            "ema": ema,
            "settings": asdict(settings),
        }
