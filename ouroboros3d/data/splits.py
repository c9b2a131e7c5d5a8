"""Which objects each split renders: a seeded subset of the split's source, and in train the
real scans (YCB objects in neither val nor eval, textured libero shapes), each along several
orbits; with ``data.eval_textured`` eval adds the textured shapes that do not train.

Pure functions of the params: the render stage (:mod:`.render_stage`) turns their objects into
render jobs, and the learning study asks them which rendered objects a smaller split keeps.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np

from ..config import Params
from ..errors import UserError
from .sources import MeshObject, make_source

__all__ = [
    "ORBIT_MARK",
    "SPLITS",
    "DatasetTooSmallError",
    "base_object_id",
    "hash_seed",
    "plan_objects",
    "real_training_objects",
    "select_objects",
    "split_objects",
    "textured_training_objects",
]

SPLITS = ("train", "val", "eval")
ORBIT_MARK = "~orbit"


class DatasetTooSmallError(UserError, RuntimeError):
    """A split ended up with fewer usable objects than ``data.min_objects``."""


def hash_seed(*parts) -> int:
    """A 64-bit seed from a hash of ``parts``: draws that depend on nothing else."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "little")


def select_objects(objects: list[MeshObject], max_objects: int, seed: int, split: str) -> list[MeshObject]:
    """All objects, or a seeded random subset of ``max_objects`` of them, sorted by id."""
    return _seeded_subset(sorted(objects, key=lambda o: o.object_id), max_objects, seed, split)


def _seeded_subset(items: list, count: int, seed: int, name: str) -> list:
    """All ``items``, or ``count`` of them drawn from (seed, name), in their order."""
    if len(items) <= count:
        return items
    rng = np.random.default_rng(hash_seed("subset", seed, name))
    return [items[i] for i in np.sort(rng.choice(len(items), size=count, replace=False))]


def _along_orbits(objects: list[MeshObject], orbits: int) -> list[MeshObject]:
    """Each object once per orbit, as ``<id>~orbit<k>``: its own random elevation and azimuth offset."""
    return [replace(o, object_id=f"{o.object_id}{ORBIT_MARK}{k}") for o in objects for k in range(orbits)]


def plan_objects(params: Params, split: str) -> list[MeshObject]:
    """The objects a split draws from its source (without the opt-in textured scans)."""
    split_params = getattr(params.data, split)
    objects = make_source(split_params.source, params.data).objects()
    return select_objects(objects, split_params.max_objects, params.seed, split)


def base_object_id(object_id: str) -> str:
    """The object an id names: ``ycb-017_orange~orbit3`` (one of several orbits) -> ``ycb-017_orange``."""
    return object_id.split(ORBIT_MARK)[0]


def split_objects(params: Params, split: str) -> list[MeshObject]:
    """The objects of one split: ``"train"``, ``"val"`` (for choosing settings) or ``"eval"``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; have {SPLITS}")
    split_params = getattr(params.data, split)
    candidates = make_source(split_params.source, params.data).objects()
    if split == "val" and split_params.source == params.data.eval.source:
        # validation objects come from the eval source but never from the eval split itself
        held = {o.object_id for o in plan_objects(params, "eval")}
        candidates = [o for o in candidates if o.object_id not in held]
    objects = select_objects(candidates, split_params.max_objects, params.seed, split)
    if split == "train" and split_params.real_objects:
        objects += real_training_objects(params)
    if split == "train":
        objects += textured_training_objects(params)
    if split == "eval" and params.data.eval_textured and split_params.source != "libero":
        trained = {o.shape_id for o in textured_training_objects(params)}
        objects += [o for o in make_source("libero", params.data).objects() if o.shape_id not in trained]
    return objects


def real_training_objects(params: Params) -> list[MeshObject]:
    """``data.train.real_objects`` YCB objects in neither val nor eval, once per orbit.

    Each copy gets its own id (``<id>~orbit<k>``), and with it its own random elevation and
    azimuth offset: several views of the same real object, as the eval split's objects are.
    """
    train = params.data.train
    held = {o.object_id for split in ("val", "eval") for o in _planned_real(params, split)}
    candidates = [o for o in make_source("ycb", params.data).objects() if o.object_id not in held]
    if len(candidates) < train.real_objects:
        raise DatasetTooSmallError(
            f"data.train.real_objects: {train.real_objects} asked, but only {len(candidates)} YCB objects "
            "are in neither val nor eval"
        )
    return _along_orbits(select_objects(candidates, train.real_objects, params.seed, "train-real"), train.real_orbits)


def textured_training_objects(params: Params) -> list[MeshObject]:
    """The textured ``libero`` scans of ``data.train.textured_objects`` shapes (a seeded subset of
    the source's distinct geometries, each with all its recoloured and resized copies), once per
    orbit (``data.train.real_orbits``) as :func:`real_training_objects`. The other shapes are what
    ``data.eval_textured`` adds to eval, so no scan, nor a copy of it, both trains and evaluates."""
    count = params.data.train.textured_objects
    if not count:
        return []
    scans = make_source("libero", params.data).objects()
    shapes = sorted({o.shape_id for o in scans})
    if len(shapes) < count:
        raise DatasetTooSmallError(
            f"data.train.textured_objects: {count} asked, but the libero source has {len(shapes)} distinct shapes"
        )
    chosen = set(_seeded_subset(shapes, count, params.seed, "train-textured"))
    return _along_orbits([o for o in scans if o.shape_id in chosen], params.data.train.real_orbits)


def _planned_real(params: Params, split: str) -> list[MeshObject]:
    split_params = getattr(params.data, split)
    if split_params.source != "ycb":
        return []
    if split == "val":
        return split_objects(params, "val")
    return plan_objects(params, split)
