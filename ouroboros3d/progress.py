"""Progress bars: tqdm's on a terminal; in a log, one plain line now and then.

Under ``dvc repro`` or ``nohup`` stderr is a file, and tqdm's redraws (a carriage return each)
make a 1000-step stage's log one line thousands of updates long. Where the stream is not a
terminal, :func:`bar` redraws at most every :data:`LOG_INTERVAL_S` seconds, each redraw its own
line: a run of T seconds logs about T / 60 lines, however many steps it has.
"""

from __future__ import annotations

import io
import sys

from tqdm import tqdm

__all__ = ["LOG_INTERVAL_S", "bar"]

LOG_INTERVAL_S = 60.0


class _Lines(io.TextIOBase):
    """A text stream for tqdm that writes each redraw as a line (and a repeated one once)."""

    def __init__(self, stream):
        self.stream, self.last = stream, ""

    def write(self, text: str) -> int:
        for part in text.split("\r"):
            line = part.strip()
            if line and line != self.last:
                self.stream.write(line + "\n")
                self.last = line
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
