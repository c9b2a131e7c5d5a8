"""Make torchvision importable next to a CPU-only torch: the project's one workaround.

The registry's only torchvision matching torch 2.13.0 is a CUDA build. Next to the CPU
torch its compiled extension (``torchvision/_C.so``) fails to load, and torchvision's
import then dies registering fake kernels for ``torchvision::nms``/``qnms``, operators
that only the extension defines. diffusers, lpips and clean-fid all import torchvision,
so they die with it.

:func:`ensure_torchvision_importable` runs once, when ``ouroboros3d`` is imported. If the
extension loads (any normal CPU or GPU install) it does nothing else. If it cannot load,
it declares the two operator schemas so torchvision's pure-Python parts (model
definitions, transforms) import and run; its compiled ops stay unavailable and raise if
called. Nothing here runs when torchvision is absent or already imported.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library: torch.library.Library | None = None  # kept alive: dropping it removes the schemas
TORCHVISION_OPS_AVAILABLE: bool | None = None  # None: torchvision absent or imported first


def ensure_torchvision_importable() -> None:
    global _library, TORCHVISION_OPS_AVAILABLE
    if "torchvision" in sys.modules or _library is not None:
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    extensions = sorted(Path(next(iter(spec.submodule_search_locations))).glob("_C*.so"))
    try:
        for ext in extensions[:1]:
            torch.ops.load_library(str(ext))
        TORCHVISION_OPS_AVAILABLE = bool(extensions)
        return
    except (OSError, ImportError, RuntimeError):
        TORCHVISION_OPS_AVAILABLE = False
    _library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS.values():
        _library.define(schema)
