"""DVC stage ``render``: render the train and eval objects into data/renders (see ouroboros3d.data)."""

from __future__ import annotations

import argparse
import sys

from ouroboros3d.config import load_params
from ouroboros3d.data import SPLITS, render_dataset
from ouroboros3d.errors import guard


@guard
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default="data/renders")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    parser.add_argument("--resume", action="store_true", help="reuse complete objects rendered with the same settings")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    render_dataset(params, args.out, tuple(args.splits), resume=args.resume, progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
