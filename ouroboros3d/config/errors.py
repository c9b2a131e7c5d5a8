"""How a params check fails: :class:`ParamsError` and its one line, ``params: <key>: <what is wrong>``.

Every check of :mod:`ouroboros3d.config` goes through :func:`_check`, so every message names the
dotted key it is about (``model.denoiser.block_out_channels``); the stage scripts print it as one
``error:`` line (:mod:`ouroboros3d.errors`).
"""

from __future__ import annotations

from typing import Any

from ..errors import UserError

__all__ = ["ParamsError"]


class ParamsError(UserError, ValueError):
    """A params.yaml value is missing, unknown, of the wrong type or out of range."""


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ParamsError(f"params: {key}: {msg}")


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` for an error line, cut to ``limit`` characters."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
