"""The building blocks of G's U-Net (LGM's): residual blocks with FiLM timestep conditioning,
attention across the views of an object, and the level that strings them together.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SKIP_SCALE", "Level", "MultiViewAttention", "ResBlock", "group_norm"]

SKIP_SCALE = 1.0 / math.sqrt(2.0)  # keeps the residual stream's variance from growing with depth


def group_norm(channels: int) -> nn.GroupNorm:
    """32 groups as LGM where the width allows (>= 64 channels), else groups of at least 2 channels."""
    return nn.GroupNorm(math.gcd(32, max(channels // 2, 1)), channels, eps=1e-5)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv3x3 twice, plus a skip; the timestep embedding scales and shifts the
    second normalised activations (FiLM). A plain added bias, as in the first DDPM U-Nets, would
    be removed again by GroupNorm wherever a group holds a single channel."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int | None):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_channels) if emb_dim else None
        self.norm2 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        h = self.norm2(self.conv1(F.silu(self.norm1(x))))
        if self.emb is not None:
            scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
            h = h * (1.0 + scale) + shift
        h = self.conv2(F.silu(h))
        return (h + self.skip(x)) * SKIP_SCALE


class MultiViewAttention(nn.Module):
    """Self-attention over the tokens of all views of an object jointly: (B*V, C, H, W) -> same."""

    def __init__(self, channels: int, views: int, head_dim: int = 64):
        super().__init__()
        self.views = views
        self.heads = max(1, channels // head_dim)
        if channels % self.heads:
            raise ValueError(f"{channels} channels do not split into {self.heads} heads")
        self.norm = group_norm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        bv, c, h, w = x.shape
        b, length = bv // self.views, self.views * h * w
        tokens = self.norm(x).reshape(b, self.views, c, h * w).transpose(2, 3).reshape(b, length, c)
        q, k, v = self.qkv(tokens).reshape(b, length, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, length, c)
        out = self.proj(out).reshape(b, self.views, h * w, c).transpose(2, 3).reshape(bv, c, h, w)
        return (x + out) * SKIP_SCALE


class Level(nn.Module):
    """One U-Net level: residual blocks (each optionally followed by attention), then a resampler.

    ``skip_channels`` has one entry per residual block: the channels of the skip connection it
    concatenates to its input (0 for none). Down levels push each block's output, and the
    resampler's, to ``skips_out``; up levels pop one skip per block from ``skips_in``. The middle
    level (``attention_between``) is res, attention, res.
    """

    def __init__(self, in_channels, skip_channels, width, attend, emb_dim, attention, attention_between=False):
        super().__init__()
        self.res = nn.ModuleList()
        self.attn = nn.ModuleList()
        channels = in_channels
        for i, skip in enumerate(skip_channels):
            self.res.append(ResBlock(channels + skip, width, emb_dim))
            use = attend and (not attention_between or i < len(skip_channels) - 1)
            self.attn.append(attention(width) if use else nn.Identity())
            channels = width
        self.resample: nn.Module | None = None

    def forward(self, x, emb, skips_out: list | None = None, skips_in: list | None = None):
        for res, attn in zip(self.res, self.attn, strict=True):
            if skips_in is not None:
                x = torch.cat([x, skips_in.pop()], dim=1)
            x = attn(res(x, emb))
            if skips_out is not None:
                skips_out.append(x)
        if self.resample is not None:
            x = self.resample(x)
            if skips_out is not None:
                skips_out.append(x)
        return x
