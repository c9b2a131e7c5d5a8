"""DVC stage ``ccm``: CCMs of every rendered object into data/ccm, and a dataset figure per split."""

from __future__ import annotations

import sys
from pathlib import Path

from ouroboros3d.config import load_params
from ouroboros3d.data import SPLITS, write_ccms
from ouroboros3d.data.previews import dataset_figure, pick_figure_objects
from ouroboros3d.errors import ArgumentParser, guard


@guard
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--renders", default="data/renders")
    parser.add_argument("--out", default="data/ccm")
    parser.add_argument("--figures", default="results/figures")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    done = write_ccms(
        args.renders, args.out, params.ccm.normalization, tuple(args.splits), progress=not args.no_progress
    )
    for split, ids in done.items():
        figure = Path(args.figures) / f"dataset_{split}.png"
        dataset_figure(Path(args.renders) / split, Path(args.out) / split, pick_figure_objects(ids), figure)
        print(f"{split}: {len(ids)} CCMs, figure {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
