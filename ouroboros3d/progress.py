"""Progress bars: tqdm's on a terminal; in a log, one plain line now and then.

Under ``dvc repro`` or ``nohup`` stderr is a file, and tqdm's redraws (a carriage return each)
make a 1000-step stage's log one line thousands of updates long. Where the stream is not a
terminal, :func:`bar` writes a redraw as a line at most every :data:`LOG_INTERVAL_S` seconds,
and the bar's last state when it closes: a run of T seconds logs about T / 60 lines, however
many steps it has.
"""

from __future__ import annotations

import io
import math
import sys
import time

from tqdm import tqdm

__all__ = ["LOG_INTERVAL_S", "bar"]

LOG_INTERVAL_S = 60.0


class _Lines(io.TextIOBase):
    """A text stream for tqdm that turns its redraws into lines, at most one per
    :data:`LOG_INTERVAL_S` (and the last one when the bar closes); messages (``tqdm.write``)
    pass as they are. The gate is here, not in tqdm's ``mininterval``, because ``set_postfix``
    redraws at every call."""

    def __init__(self, stream):
        self.stream, self.status, self.shown, self.at = stream, "", "", -math.inf

    def _emit(self) -> None:
        self.stream.write(self.status + "\n")
        self.shown, self.at = self.status, time.monotonic()

    def write(self, text: str) -> int:
        if text.startswith("\r"):  # a redraw, or the clearing before a message
            status = text.split("\r")[-1].strip() or text.strip()
            self.status = status or self.status
            due = time.monotonic() - self.at >= LOG_INTERVAL_S
            if self.status and self.status != self.shown and due:
                self._emit()
        elif text == "\n":  # the bar closes (or a message ends): its last state
            if self.status and self.status != self.shown:
                self._emit()
        elif text.strip():  # a message
            self.stream.write(text.rstrip("\n") + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def bar(iterable=None, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)`` on stderr (or ``file=``); plain timed lines where that is not a terminal."""
    stream = kwargs.pop("file", None) or sys.stderr
    if not (hasattr(stream, "isatty") and stream.isatty()):
        kwargs |= {"mininterval": LOG_INTERVAL_S, "ascii": True, "ncols": 100}
        stream = _Lines(stream)
    return tqdm(iterable, file=stream, **kwargs)
