"""Joint training loop (Algorithm 1) with accelerate, EMA, and exact resume.

Every source of randomness in a step is derived from ``(seed, step)``: the batch's object
indices and the :class:`ouroboros3d.model.Draws` passed to :func:`ouroboros3d.model.training_losses`
(each sample's generator also from its index in the step's global batch). A run
killed at any point and resumed from its last checkpoint (weights, EMA, optimizer state,
all in one safetensors file written atomically) therefore continues exactly as the
uninterrupted run would have.

Distributed (``accelerate launch``, one process per device): rank r trains on positions
r, r + world, ... of the step's global batch of ``batch_size * world`` objects, each with the
draws of its global position, so how a batch is split over ranks changes nothing but float
rounding. Only rank 0 writes logs and checkpoints; every rank resumes from the same one.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from safetensors.torch import load_file
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from ..config import TrainSettings
from ..errors import UserError
from ..files import check_state, save_tensors
from ..model import Draws, LossWeights, Ouroboros3D, recolour
from ..progress import bar as progress_bar
from .tracking import RunLog

__all__ = [
    "EMA",
    "TrainSettings",
    "batch_indices",
    "batch_plan",
    "load_training_state",
    "lr_schedule",
    "sample_generator",
    "save_training_state",
    "step_draws",
    "train",
]

LOG_FIELDS = ("step", "loss", "loss_mv", "loss_recon", "loss_rgb", "loss_alpha", "lr", "seconds")


class EMA:
    """Exponential moving average of a model's trainable parameters, with warm-up.

    The decay at update n is ``min(decay, (1 + n) / (10 + n))`` (diffusers' ``EMAModel``
    and k-diffusion's warm-up): early averages forget the initial weights fast, so a short
    run's EMA does not keep a share of its random initialisation. Frozen parameters (a
    pretrained VAE or CLIP) are not averaged: they never change.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.shadow = {k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad}

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        self.updates += 1
        for k, p in model.named_parameters():
            if k in self.shadow:
                self.shadow[k].lerp_(p.detach(), 1.0 - decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        for k, p in model.named_parameters():
            if k in self.shadow:
                p.copy_(self.shadow[k])


def batch_indices(num_items: int, batch_size: int, step: int, seed: int) -> list[int]:
    """The dataset indices of training step ``step``: epochs of seeded permutations."""
    start = step * batch_size
    out: list[int] = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), num_items)
        perm = torch.randperm(num_items, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        out.extend(perm[offset : offset + batch_size - len(out)].tolist())
    return out


def mixed_batch_indices(groups: Sequence[Sequence[int]], counts: Sequence[int], step: int, seed: int) -> list[int]:
    """Step ``step``'s dataset indices when every batch takes ``counts[g]`` items of group ``g``
    (``groups[g]``: its dataset indices): each group in its own seeded epochs, so a small group
    (the real scans) is revisited more often than a large one, and a step is still a function
    of ``(seed, step)`` alone (exact resume)."""
    out: list[int] = []
    for g, (members, count) in enumerate(zip(groups, counts, strict=True)):
        if count:
            out += [members[i] for i in batch_indices(len(members), count, step, seed * 7_919 + g)]
    return out


def real_objects(object_ids: Sequence[str]) -> list[bool]:
    """Which training objects are real scans: every source but the procedural ``random_urdfs``
    (object ids are ``<source>-<name>``, ouroboros3d.data.sources)."""
    return [not oid.startswith("random_urdfs-") for oid in object_ids]


def batch_plan(dataset, batch_size: int, real_share: float | None) -> Callable[[int, int], list[int]]:
    """``plan(step, seed)``: the step's dataset indices, with ``real_share`` of each batch from
    the real scans (rounded; None: all objects alike, :func:`batch_indices`). A dataset with a
    real share must name its objects (``object_ids``, as :class:`MultiViewDataset`)."""
    if real_share is None:
        return lambda step, seed: batch_indices(len(dataset), batch_size, step, seed)
    real = real_objects(dataset.object_ids)
    groups = [[i for i, r in enumerate(real) if not r], [i for i, r in enumerate(real) if r]]
    n_real = round(batch_size * real_share)
    counts = [batch_size - n_real, n_real]
    for members, count, what in zip(groups, counts, ("procedural", "real"), strict=True):
        if count and not members:
            raise UserError(
                f"train.real_share {real_share} asks for {count} {what} objects per batch, but the training "
                f"split has none: set real_share to null or {0.0 if what == 'real' else 1.0}, or render such objects"
            )
    return lambda step, seed: mixed_batch_indices(groups, counts, step, seed)


def step_generator(seed: int, step: int) -> torch.Generator:
    """The step's batch-wide draws (the second-pass coin): the same on every rank."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step + 1)


def sample_generator(seed: int, step: int, position: int) -> torch.Generator:
    """The draws of the sample at ``position`` in step ``step``'s global batch, on any rank."""
    digest = hashlib.blake2b(f"{seed}/{step}/{position}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little"))


def step_draws(seed: int, step: int, positions: Sequence[int]) -> Draws:
    """The :class:`Draws` of the samples at ``positions`` of step ``step``'s global batch."""
    return Draws([sample_generator(seed, step, j) for j in positions], step_generator(seed, step))


# --- checkpoints ---------------------------------------------------------------------


def _checkpointed_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without the parameters training never changes (a pretrained VAE, CLIP)."""
    frozen = {k for k, p in model.named_parameters() if not p.requires_grad}
    return {k: v for k, v in model.state_dict().items() if k not in frozen}


def save_training_state(
    path: Path,
    model: nn.Module,
    ema: EMA,
    optimizer: torch.optim.Optimizer,
    step: int,
    fingerprint: str,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Trainable weights, EMA, AdamW and fp16 loss-scaler state in one safetensors file, replaced atomically.

    Frozen parameters are left out (they are rebuilt from their pretrained folders), and
    so is the lr schedule, a function of the step. This rather than accelerate's
    ``save_state``: that writes a folder of pickles one file at a time, so a kill during a
    save can leave a checkpoint that does not load, and its RNG states are not needed here,
    where every draw is a function of ``(seed, step)``.
    """
    tensors = {f"model.{k}": v for k, v in _checkpointed_state(model).items()}
    tensors.update({f"ema.{k}": v for k, v in ema.shadow.items()})
    names = {id(p): k for k, p in model.named_parameters()}
    groups = []
    for group in optimizer.param_groups:
        groups.append(
            {k: v for k, v in group.items() if k != "params"} | {"params": [names[id(p)] for p in group["params"]]}
        )
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                tensors[f"optim.{names[id(p)]}.{key}"] = torch.as_tensor(value)
    metadata = {"step": str(step), "fingerprint": fingerprint, "param_groups": json.dumps(groups)}
    metadata["ema_updates"] = str(ema.updates)
    if scaler is not None and scaler.is_enabled():
        metadata["grad_scaler"] = json.dumps(scaler.state_dict())
    save_tensors(path, tensors, metadata)


def checkpoint_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata()


def load_training_state(
    path: Path,
    model: nn.Module,
    ema: EMA,
    optimizer: torch.optim.Optimizer,
    device: torch.device | str = "cpu",
    scaler: torch.amp.GradScaler | None = None,
) -> int:
    """Restore a :func:`save_training_state` file (the rolling resume checkpoint); returns its step."""
    tensors = load_file(str(path))
    meta = checkpoint_metadata(path)
    own = _checkpointed_state(model)
    frozen = set(model.state_dict()) - set(own)  # a checkpoint of before they were left out has them: not read
    state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.") and k[6:] not in frozen}
    check_state(state, own, path)  # before loading: a file that does not fit changes nothing
    model.load_state_dict(state, strict=False)
    if scaler is not None and scaler.is_enabled() and "grad_scaler" in meta:
        scaler.load_state_dict(json.loads(meta["grad_scaler"]))
    for k in ema.shadow:
        ema.shadow[k].copy_(tensors[f"ema.{k}"])
    ema.updates = int(meta.get("ema_updates", meta["step"]))
    params = dict(model.named_parameters())
    for group, saved in zip(optimizer.param_groups, json.loads(meta["param_groups"]), strict=True):
        group.update({k: v for k, v in saved.items() if k != "params"})
        for name in saved["params"]:
            prefix = f"optim.{name}"
            state = {k.rsplit(".", 1)[1]: v.to(device) for k, v in tensors.items() if k.rsplit(".", 1)[0] == prefix}
            if state:
                optimizer.state[params[name]] = state
    return int(meta["step"])


# --- the loop --------------------------------------------------------------------------


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


# what the training objectives read of a dataset item (not its ccm or plucker maps: G's rays
# are computed from K and c2w at its own resolution)
BATCH_KEYS = ("views", "alpha", "K", "c2w", "input_view")


def _collate(items: Sequence[dict], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.stack([it[k] for it in items]).to(device) for k in BATCH_KEYS}


def _validate_ema(model: nn.Module, ema: EMA, validate: Callable[[nn.Module], dict]) -> dict:
    """``validate`` on a copy of ``model`` holding the EMA weights (the weights that get shipped)."""
    shadow = copy.deepcopy(model)
    ema.copy_to(shadow)
    return validate(shadow)


def die_with_launcher() -> None:
    """Under a launcher (``accelerate launch``/torchrun set ``LOCAL_RANK``), end this rank soon
    after the launcher is gone: a killed launcher must not leave ranks training on as orphans
    (they would finish and write the model while a relaunch trains on the same checkpoint)."""
    if "LOCAL_RANK" not in os.environ:
        return
    launcher = os.getppid()

    def watch():
        while os.getppid() == launcher:  # an orphan is adopted by init or a subreaper
            time.sleep(1.0)
        print(f"rank {os.environ.get('RANK', '?')}: the launcher is gone; stopping", file=sys.stderr, flush=True)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-launcher", daemon=True).start()


@contextlib.contextmanager
def own_checkpoints(folder: Path):
    """Hold ``folder``'s lock for the block: one run trains into a checkpoint folder at a time.
    An OS lock (flock): a run that died, however it died, holds nothing."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UserError(
            f"{folder} is in use by another training run (it holds {folder / '.lock'}); "
            "wait for it to end or stop it, then run again"
        ) from None
    try:
        yield
    finally:
        lock.release()


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
) -> dict:
    """Train ``model`` for ``settings.steps`` steps, resuming from ``checkpoint_dir/last.safetensors``.

    A checkpoint whose fingerprint (a hash of the params that shape training) differs is
    not resumed: training starts over and says so. ``stop_after`` ends the run early after
    that many steps of this call (tests use it to simulate a kill). ``validate(model)``, if
    given, scores the EMA weights at the end and every ``validate_every`` steps (0: only at the end).
    The losses and the validation scores (a learning curve) go to the dvclive directory ``log_dir``
    (:class:`ouroboros3d.training.tracking.RunLog`), with ``log_params`` as its params. Returns a summary.
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
        start = 0
        if last.exists():
            meta = checkpoint_metadata(last)
            if meta.get("fingerprint") == fingerprint:
                start = load_training_state(last, model, ema, optimizer, accelerator.device, scaler)
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
        end = settings.steps if stop_after is None else min(settings.steps, start + stop_after)
        steps = range(start, end)
        bar = progress_bar(steps, initial=start, total=settings.steps, disable=not progress or rank, desc="train")
        t0 = time.perf_counter()
        losses: dict = {}
        model.train()
        try:
            for step in bar:
                idx = plan(step, seed)
                positions = range(rank, len(idx), world)  # this rank's share of the global batch
                batch = _collate([dataset[idx[j]] for j in positions], accelerator.device)
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
                    save_training_state(
                        last, accelerator.unwrap_model(model), ema, optimizer, done, fingerprint, scaler
                    )
                if on_step is not None:
                    on_step(done, values)
            log.close(steps=end, finished=end == settings.steps, seconds=round(time.perf_counter() - t0, 3))
        finally:
            log.close()  # an exception's way out: what was logged is kept (a no-op after the close above)
            bar.close()
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
