"""What each training step trains on: the step's objects, each sample's random draws, and the
loader that reads this rank's share of every step's batch.

All of it is a function of ``(seed, step)`` (and of a sample's position in the step's global
batch), never of what ran before, so a run killed at any step and resumed from its checkpoint
trains on exactly what the uninterrupted run trained on (:mod:`ouroboros3d.training.loop`).

The items are read ahead of the training in worker processes (:func:`training_batches`); the
random draws, recolouring included, stay in the training process, with the model.
"""

from __future__ import annotations

import hashlib
import multiprocessing
from collections.abc import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data.dataset import MultiViewDataset, collate
from ..errors import UserError
from ..model import Draws

__all__ = [
    "BATCH_KEYS",
    "LOADER_WORKERS",
    "StepShares",
    "batch_indices",
    "batch_plan",
    "mixed_batch_indices",
    "real_objects",
    "sample_generator",
    "step_draws",
    "step_generator",
    "training_batches",
]

# what the training objectives read of a dataset item (not its depth, CCM or Plücker maps: G's
# rays are computed from K and c2w at its own resolution)
BATCH_KEYS = ("views", "alpha", "K", "c2w", "input_view")

# worker processes that read the batches ahead of the training: one hides the reading behind
# the step, more buy nothing on 2 cores (benchmarks/bench_loader.py)
LOADER_WORKERS = 1


# --- the objects of a step ---------------------------------------------------------------


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


# --- the random draws of a step ----------------------------------------------------------


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


# --- reading the batches -----------------------------------------------------------------


class StepShares(Sampler[list[int]]):
    """This rank's dataset indices for each step of ``steps``, in order: the items at ``positions``
    (rank r of n: r, r + n, ...) of the step's global batch ``plan(step, seed)``."""

    def __init__(self, plan: Callable[[int, int], list[int]], seed: int, steps: range, positions: Sequence[int]):
        self.plan, self.seed, self.steps, self.positions = plan, seed, steps, positions

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self) -> Iterator[list[int]]:
        for step in self.steps:
            indices = self.plan(step, self.seed)
            yield [indices[j] for j in self.positions]


class _TrainingItems(Dataset):
    """``dataset``'s items as training reads them: :data:`BATCH_KEYS` alone (a :class:`MultiViewDataset`
    reads and computes nothing else). An expected error (a file damaged since the dataset opened)
    is returned rather than raised: the training process raises it as it is, where a worker's
    exception would come back wrapped, its traceback in its message."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor] | UserError:
        try:
            if isinstance(self.dataset, MultiViewDataset):
                return self.dataset.item(index, BATCH_KEYS)
            item = self.dataset[index]
        except UserError as e:
            return e
        return {k: item[k] for k in BATCH_KEYS}


def _stack_share(items: list) -> dict[str, torch.Tensor] | UserError:
    """The share's items stacked into a batch, or the first item's error."""
    for item in items:
        if isinstance(item, UserError):
            return item
    return collate(items, BATCH_KEYS)


def training_batches(
    dataset,
    plan: Callable[[int, int], list[int]],
    seed: int,
    steps: range,
    positions: Sequence[int],
    device: torch.device | str,
    workers: int = LOADER_WORKERS,
) -> Iterator[dict[str, torch.Tensor]]:
    """This rank's share of each step's batch (:class:`StepShares`), stacked and on ``device``, one
    per step of ``steps``: read by a DataLoader in ``workers`` processes ahead of the training
    (0: in this process, as each step asks).

    The workers are forked: they read the dataset this process holds, in memory or not, and
    hold no lock of it (filelock closes its descriptors in a fork child, so a checkpoint folder
    is free as soon as its run is gone, ouroboros3d.training.state.own_checkpoints). A worker
    whose process is gone, killed or ended by ``die_with_launcher``, ends within seconds (torch's
    worker watchdog).
    """
    fork = workers and "fork" in multiprocessing.get_all_start_methods()
    loader = DataLoader(
        _TrainingItems(dataset),
        batch_sampler=StepShares(plan, seed, steps, positions),
        num_workers=workers,
        collate_fn=_stack_share,
        # the workers' seeds come from this generator: the global one, which the model may
        # draw from, stays as it was (the items draw nothing; the training's draws are step_draws)
        generator=torch.Generator().manual_seed(seed),
        multiprocessing_context="fork" if fork else None,
    )
    for share in loader:
        if isinstance(share, UserError):
            raise share
        yield {k: v.to(device) for k, v in share.items()}
