"""The feedback injection network of the supplementary's section 1.4 (Table 1, Figure 2).

Two copies exist in the denoiser: ``F^0`` encodes the canonical coordinate map (CCM) and
``F^1`` the RGB texture map rendered from the 3D reconstruction (eq. 10-11). Each turns a
(N, 3, H, W) map into one feature map per scale of the UNet encoder; the denoiser adds
them to the encoder features ``F_enc^i`` (eq. 12).

Layout, exactly Table 1 for ``unshuffle=8`` and a 3x512² input:

    PixelUnshuffle(8)                  3x512²  -> 192x64²
    conv3x3 -> channels[0]             192x64² -> 320x64²
    scale 1: 3 x ResidualBlock         320x64²
    scale 2: avgpool/2, 1x1 conv, 3 x ResidualBlock   640x32²
    scale 3: avgpool/2, 1x1 conv, 3 x ResidualBlock   1280x16²
    scale 4: avgpool/2,           3 x ResidualBlock   1280x8²

Choices Table 1 leaves open, taken as in T2I-Adapter's "full adapter" (the same family):
the resolution halves between scales with a parameter-free 2x2 average pool, and the
channel count changes at the first block of a scale with a 1x1 convolution (only where
it changes). Each residual block is Figure 2's ``conv3x3 - ReLU - conv3x3`` plus a skip,
with its last conv zero-initialised (as the paper's implementation), so every block starts
as the identity.

Our one addition to Table 1: a zero-initialised 1x1 output projection per scale
(ControlNet's "zero convolution"). Zero-initialising the residual branch alone leaves the
skip path and the input conv's bias, so an untrained network would still emit non-zero
features; with the output projections an untrained feedback adds exactly zero and the
denoiser starts out unchanged. Gradients still reach the projections at once (their
gradient is the non-zero feature map), and the rest of the network after the first step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["FeedbackNetwork", "ResidualBlock"]


class ResidualBlock(nn.Module):
    """Figure 2: ``x + conv3x3(relu(conv3x3(x)))``, channel count and resolution kept.

    The second conv is zero-initialised, so the block starts as the identity.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act(self.conv1(x)))


class FeedbackScale(nn.Module):
    """One row of Table 1: optional downsample and channel change, then the residual blocks."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, downsample: bool):
        super().__init__()
        # ceil_mode keeps odd sizes in step with the UNet's stride-2 downsamplers (which round up).
        self.downsample = nn.AvgPool2d(kernel_size=2, stride=2, ceil_mode=True) if downsample else nn.Identity()
        self.channel_change = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else nn.Identity()
        )
        self.blocks = nn.Sequential(*(ResidualBlock(out_channels) for _ in range(num_blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.channel_change(self.downsample(x)))


class FeedbackNetwork(nn.Module):
    """Multi-scale encoder of a rendered feedback map (Table 1), one output per UNet scale.

    Args:
        in_channels: channels of the map (3 for a CCM or an RGB texture map).
        unshuffle: PixelUnshuffle factor; the ratio of the map's resolution to the UNet's
            first level (8 for 512² maps and a 64² latent; 1 in pixel space when the first
            level runs at image resolution). Any positive factor is accepted.
        channels: output channels per scale, equal to the UNet's ``block_out_channels``.
        blocks_per_scale: residual blocks per scale (3 in the paper).

    Input: (N, in_channels, H, W), the map in [0, 1] (used as-is), H and W divisible by
    ``unshuffle``. Output: a list of ``len(channels)`` tensors, scale ``i`` being
    (N, channels[i], H / unshuffle / 2^i, W / unshuffle / 2^i) (sizes rounded up, as the
    UNet's downsamplers do). All outputs are exactly zero until the output projections
    are trained.
    """

    def __init__(
        self,
        in_channels: int = 3,
        unshuffle: int = 8,
        channels: Sequence[int] = (320, 640, 1280, 1280),
        blocks_per_scale: int = 3,
    ):
        super().__init__()
        if unshuffle < 1:
            raise ValueError(f"unshuffle factor must be >= 1, got {unshuffle}")
        if not channels:
            raise ValueError("need at least one scale")
        self.unshuffle_factor = unshuffle
        self.channels = tuple(channels)
        self.unshuffle = nn.PixelUnshuffle(unshuffle)
        self.conv_in = nn.Conv2d(in_channels * unshuffle**2, channels[0], kernel_size=3, padding=1)
        self.scales = nn.ModuleList(
            FeedbackScale(channels[max(i - 1, 0)], c, blocks_per_scale, downsample=i > 0)
            for i, c in enumerate(channels)
        )
        self.zero_convs = nn.ModuleList(nn.Conv2d(c, c, kernel_size=1) for c in channels)
        for conv in self.zero_convs:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, maps: torch.Tensor) -> list[torch.Tensor]:
        h, w = maps.shape[-2:]
        if h % self.unshuffle_factor or w % self.unshuffle_factor:
            raise ValueError(f"map size {h}x{w} is not divisible by the unshuffle factor {self.unshuffle_factor}")
        x = self.conv_in(self.unshuffle(maps))
        features = []
        for scale, zero_conv in zip(self.scales, self.zero_convs, strict=True):
            x = scale(x)
            features.append(zero_conv(x))
        return features
