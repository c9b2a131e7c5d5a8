"""PyTorch dataset over rendered objects in the documented folder layout.

Each item is one object, a dict of tensors (V views, H x W pixels; view 0 is the input view):

==============  ===============  =========  ==============================================
key             shape            dtype      values
==============  ===============  =========  ==============================================
``input_view``  (3, H, W)        float32    RGB in [0, 1] on a white background (= views[0])
``views``       (V, 3, H, W)     float32    RGB in [0, 1] on a white background
``alpha``       (V, 1, H, W)     float32    1 on the object, 0 on the background
``depth``       (V, H, W)        float32    z-depth in world units (> 0), 0 on the background
``ccm``         (V, 3, H, W)     float32    canonical coordinates in [0, 1]; background value
                                            of the CCM normalisation (0 by default)
``K``           (V, 3, 3)        float32    pinhole intrinsics in pixels (OpenCV)
``c2w``         (V, 4, 4)        float32    camera-to-world, OpenCV axes, world +Z up
``plucker``     (V, 6, H, W)     float32    ray direction (unit) and moment o x d per pixel
``object_id``   --               str        the object's folder name
==============  ===============  =========  ==============================================

The CCM is read from ``<ccm_dir>/<object_id>/ccm.npy`` when a ``ccm_dir`` is given and the
file exists, and otherwise computed from the depth with the given normalisation, so the
dataset also opens a renders folder of your own that has no CCM stage output. ``dataset[i]`` is
the whole item; ``dataset.item(i, keys)`` reads and computes only what ``keys`` need (training:
no depth, CCM or rays). :func:`collate` stacks items into a batch.

Opening the dataset checks every object's files once, reading only headers (the JSON, the
``.npy`` headers, the PNG headers and ends: well under a millisecond per object), so a missing, damaged or
stale file stops with one line naming the object, the file and the fix
(:class:`~ouroboros3d.data.layout.CorruptObjectError`) before any model is built, not with a
traceback in the middle of training.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from ..errors import one_line
from ..geometry.cameras import plucker_rays
from ..geometry.ccm import CCMNormalization, depth_to_ccm
from . import layout

__all__ = ["ITEM_KEYS", "MultiViewDataset", "collate"]

# an item's keys, in its order (the table above)
ITEM_KEYS = ("input_view", "views", "alpha", "depth", "ccm", "K", "c2w", "plucker", "object_id")

# what reading a file that changed or broke after the dataset opened can raise (PIL: OSError, SyntaxError)
_READ_ERRORS = (OSError, ValueError, EOFError, SyntaxError, KeyError, TypeError, zlib.error)


class MultiViewDataset(Dataset):
    """Objects of one split folder: ``renders_dir/<object_id>/`` (rgb_XX.png, alpha_XX.png, depth.npy, cameras.json)."""

    def __init__(
        self,
        renders_dir: str | Path,
        ccm_dir: str | Path | None = None,
        ccm_normalization: CCMNormalization = CCMNormalization(),
        object_ids: list[str] | None = None,
    ):
        self.renders_dir = Path(renders_dir)
        self.ccm_dir = Path(ccm_dir) if ccm_dir is not None else None
        self.ccm_normalization = ccm_normalization
        if object_ids is None:
            layout.require_complete(self.renders_dir)
            self.object_ids = layout.list_objects(self.renders_dir)
        else:
            self.object_ids = sorted(object_ids)
        if not self.object_ids:
            raise FileNotFoundError(
                f"no rendered objects in {self.renders_dir}: expected sub-folders with {layout.CAMERAS_FILE}, "
                f"{layout.DEPTH_FILE} and rgb_XX.png/alpha_XX.png (see ouroboros3d.data)"
            )
        # every file checked once, now, from its header: (views, height, width) per object
        self.shapes = layout.check_split(self.renders_dir, self.object_ids)
        if self.ccm_dir is not None:
            for object_id, shape in self.shapes.items():
                ccm_file = self.ccm_dir / object_id / layout.CCM_FILE
                if ccm_file.exists():
                    layout.check_ccm(ccm_file, shape)

    @classmethod
    def for_split(
        cls, split: str, data_root: str | Path = "data", ccm_normalization: CCMNormalization = CCMNormalization()
    ) -> MultiViewDataset:
        """The dataset of a split as the DVC stages write it: ``data/renders/<split>`` + ``data/ccm/<split>``."""
        root = Path(data_root)
        return cls(root / "renders" / split, root / "ccm" / split, ccm_normalization)

    def __len__(self) -> int:
        return len(self.object_ids)

    def _read(self, object_id: str, keys: Collection[str]) -> dict:
        """The object's files that the item ``keys`` need, as arrays: ``cameras`` always; ``rgb`` and
        ``alpha``; ``depth``; ``ccm``, the CCM file's array (absent without one: computed from the depth)."""
        obj_dir = self.renders_dir / object_id
        files = {"cameras": layout.read_cameras(obj_dir)}
        if not {"input_view", "views", "alpha"}.isdisjoint(keys):
            files["rgb"], files["alpha"] = layout.read_views(obj_dir, len(files["cameras"]["c2w"]))
        ccm_file = self.ccm_dir / object_id / layout.CCM_FILE if self.ccm_dir is not None else None
        if "ccm" in keys and ccm_file is not None and ccm_file.is_file():
            files["ccm"] = np.load(ccm_file, allow_pickle=False)
        if "depth" in keys or ("ccm" in keys and "ccm" not in files):
            files["depth"] = np.load(obj_dir / layout.DEPTH_FILE, allow_pickle=False)
        return files

    def __getitem__(self, index: int) -> dict:
        return self.item(index)

    def item(self, index: int, keys: Collection[str] = ITEM_KEYS) -> dict:
        """Object ``index``'s item with only ``keys`` (of :data:`ITEM_KEYS`, in their order): a file no key
        needs is not read and a map not asked for is not computed (training reads no depth, CCM or rays)."""
        object_id = self.object_ids[index]
        try:  # the headers were checked when the dataset opened: what fails here is damaged inside, or changed since
            files = self._read(object_id, keys)
        except _READ_ERRORS as e:
            raise layout.CorruptObjectError(
                f"rendered object {object_id!r}: a file in {self.renders_dir / object_id} cannot be read "
                f"({one_line(e)}); " + layout.RERENDER.format(folder=self.renders_dir / object_id)
            ) from e
        K, c2w = files["cameras"]["K"], files["cameras"]["c2w"]
        item = {"K": K, "c2w": c2w, "object_id": object_id}
        if "rgb" in files:
            views = torch.from_numpy(files["rgb"]).permute(0, 3, 1, 2).float() / 255.0
            item |= {"input_view": views[0], "views": views}
            item["alpha"] = torch.from_numpy(files["alpha"]).float()[:, None] / 255.0
        if "depth" in files:
            item["depth"] = torch.from_numpy(files["depth"].astype(np.float32))
        if "ccm" in files:
            item["ccm"] = torch.from_numpy(files["ccm"].astype(np.float32))
        elif "ccm" in keys:
            item["ccm"] = depth_to_ccm(item["depth"], K, c2w, self.ccm_normalization)
        if "plucker" in keys:
            height, width = self.shapes[object_id][1:]
            item["plucker"] = plucker_rays(K, c2w, height, width)
        return {k: item[k] for k in ITEM_KEYS if k in keys}


def collate(items: Sequence[Mapping], keys: Sequence[str]) -> dict[str, torch.Tensor]:
    """The items' ``keys`` stacked into one batch (torch's ``default_collate``): how training,
    validation and evaluation batch dataset items."""
    return default_collate([{k: it[k] for k in keys} for it in items])
