"""DVC stage ``render``: render the train and eval objects into data/renders (see ouroboros3d.data).

Several machines can share the work on one shared folder: each runs ``--shard I/N`` (I = 0..N-1),
then one runs ``--merge N``; the result is the same as one unsharded run's.
"""

from __future__ import annotations

import argparse
import sys

from ouroboros3d.config import load_params
from ouroboros3d.data import SPLITS, merge_shards, render_dataset
from ouroboros3d.errors import ArgumentParser, guard


@guard
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default="data/renders")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    parser.add_argument("--resume", action="store_true", help="reuse complete objects rendered with the same settings")
    parser.add_argument("--no-progress", action="store_true")
    parallel = parser.add_mutually_exclusive_group()
    parallel.add_argument("--shard", type=_shard, help="I/N: render every N-th object from the I-th (0-based)")
    parallel.add_argument("--merge", type=int, metavar="N", help="write the manifest of N finished shards")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    if args.merge:
        merge_shards(params, args.out, args.merge, tuple(args.splits))
        return 0
    render_dataset(
        params, args.out, tuple(args.splits), resume=args.resume, progress=not args.no_progress, shard=args.shard
    )
    return 0


def _shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N, got {text!r}")
    return int(index), int(count)


if __name__ == "__main__":
    sys.exit(main())
