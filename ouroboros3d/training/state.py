"""What a training run keeps, across steps and across a kill: the EMA of the weights, the
checkpoint file (trainable weights, EMA, AdamW and loss-scaler state in one safetensors file,
written atomically), and the lock that gives a checkpoint folder to one run at a time.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from safetensors.torch import load_file
from torch import nn

from ..errors import UserError
from ..files import check_state, save_tensors

__all__ = ["EMA", "checkpoint_metadata", "load_training_state", "own_checkpoints", "save_training_state"]


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


# --- the checkpoint file ------------------------------------------------------------


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
    seconds: float = 0.0,
) -> None:
    """Trainable weights, EMA, AdamW and fp16 loss-scaler state in one safetensors file, replaced atomically.
    ``seconds`` is the training time of the steps up to ``step`` (a resumed run goes on counting from it).

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
    metadata["seconds"] = repr(float(seconds))
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


# --- the checkpoint folder ----------------------------------------------------------


@contextlib.contextmanager
def own_checkpoints(folder: Path):
    """Hold ``folder``'s lock for the block: one run trains into a checkpoint folder at a time.
    An OS lock (flock): a run that died, however it died, holds nothing, and neither do the
    processes it forked (its loader workers: filelock closes the lock's descriptor in a fork child)."""
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
