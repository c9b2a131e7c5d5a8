"""One error boundary for the stage scripts and console commands.

Expected errors (bad params, missing data or weights, unreadable files) end a command with
one line, ``error: <what and where>``, and exit code 2; anything else is a bug and keeps its
traceback. ``--debug`` anywhere on the command line shows the traceback of expected errors too.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable

__all__ = ["EXIT_USAGE", "ArgumentParser", "GenerationError", "UserError", "expected_errors", "guard", "one_line"]

EXIT_USAGE = 2


class UserError(Exception):
    """Base of the errors that mean "the input is wrong" (params, data, weights, images), not
    "the code is wrong": :func:`guard` turns them into one ``error:`` line and exit code 2."""


class GenerationError(UserError, RuntimeError):
    """A user-facing failure of image-to-3D generation (image, checkpoint, device); one line."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors (a bad option, a missing argument) are
    :class:`UserError`: one ``error:`` line under :func:`guard`, not a usage block."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message}")


def count(minimum: int):
    """An argparse type: an integer >= ``minimum``; anything else is a usage error naming the option."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def one_line(e: BaseException) -> str:
    """An exception's message on one line (its type's name when it has none)."""
    return " ".join(str(e).split()) or type(e).__name__


def expected_errors() -> tuple[type[BaseException], ...]:
    from PIL import UnidentifiedImageError

    return (
        UserError,
        UnidentifiedImageError,
        FileNotFoundError,
        NotADirectoryError,
        IsADirectoryError,
        PermissionError,
    )


def guard(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """Wrap a ``main(argv) -> exit code``: expected errors become ``error: ...`` and exit code 2."""

    @functools.wraps(main)
    def wrapped(argv: list[str] | None = None) -> int:
        args = list(sys.argv[1:] if argv is None else argv)
        debug = "--debug" in args
        try:
            return main([a for a in args if a != "--debug"])
        except expected_errors() as e:
            if debug:
                raise
            message = " ".join(str(e).split()) or type(e).__name__
            print(f"error: {message}", file=sys.stderr)
            return EXIT_USAGE

    return wrapped
