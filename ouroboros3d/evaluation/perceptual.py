"""LPIPS with pretrained weights, or a clear "unavailable": never a random network.

LPIPS = an ImageNet backbone (torchvision AlexNet or VGG16) + linear heads shipped in the
``lpips`` package. The backbone weights come from torch hub's cache
(``$TORCH_HOME/hub/checkpoints``) on first use. On a machine that cannot download them,
:func:`load_lpips` raises :class:`WeightsUnavailable` with the missing file and how to get
it, so losses stop and metrics report "unavailable", instead of silently using random
features.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError

__all__ = ["WeightsUnavailable", "backbone_weights_path", "load_lpips"]

_BACKBONES = {"alex": "AlexNet_Weights", "vgg": "VGG16_Weights"}


class WeightsUnavailable(UserError, RuntimeError):
    """Pretrained weights needed for a metric or loss are not on this machine."""


def backbone_weights_path(net: str = "alex") -> Path:
    """Where torch hub caches the ImageNet backbone LPIPS uses."""
    if net not in _BACKBONES:
        raise ValueError(f"LPIPS backbone must be one of {sorted(_BACKBONES)}, got {net!r}")
    import torchvision.models as tvm

    url = getattr(tvm, _BACKBONES[net]).IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def load_lpips(net: str = "alex", allow_download: bool = False) -> torch.nn.Module:
    """The LPIPS metric (``lpips`` package, v0.1) with pretrained backbone and heads, in eval mode.

    Without ``allow_download`` the backbone must already be cached: that keeps runs on
    offline machines from hanging on a download and failing late.
    """
    path = backbone_weights_path(net)
    if not path.is_file() and not allow_download:
        raise WeightsUnavailable(
            f"LPIPS ({net}) needs the torchvision ImageNet backbone weights at {path}, which are missing. "
            f"On a machine with network access run: python -c \"import lpips; lpips.LPIPS(net='{net}')\" "
            "and copy the file there (or set TORCH_HOME)."
        )
    import lpips

    model = lpips.LPIPS(net=net, verbose=False).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
