"""DVC stage `generate_example`: the README's picture of `ouroboros3d generate`.

Runs the user-facing generation on one eval render (RGB + alpha as RGBA, as a user would
pass a cut-out photo) with the main model, and writes its grid to paper/figures/.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from ouroboros3d.errors import guard
from ouroboros3d.generate import generate, write_outputs
from ouroboros3d.io import atomic_write_bytes


@guard
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--renders", default="data/renders/eval")
    parser.add_argument("--object", default="ycb-006_mustard_bottle", help="falls back to the first eval object")
    parser.add_argument("--checkpoint", default="models/main")
    parser.add_argument("--elevation", type=float, default=3.0)
    parser.add_argument("--out", default="paper/figures/generate_example.png")
    parser.add_argument("--work", default="results/generate_example")
    args = parser.parse_args(argv)
    folder = Path(args.renders) / args.object
    if not folder.is_dir():
        folder = sorted(p for p in Path(args.renders).iterdir() if (p / "rgb_00.png").is_file())[0]
        print(f"{args.object} is not among the eval renders: using {folder.name}")
    rgb = np.asarray(Image.open(folder / "rgb_00.png").convert("RGB"))
    alpha = np.asarray(Image.open(folder / "alpha_00.png").convert("L"))
    result = generate(np.dstack([rgb, alpha]), args.checkpoint, elevation=args.elevation, seed=0)
    files = write_outputs(result, args.work, mp4=False)
    atomic_write_bytes(args.out, Path(files["grid.png"]).read_bytes())
    print(f"wrote {args.out} ({sum(result.timings.values()):.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
