"""The ``ouroboros3d`` command (installed by ``pip install -e .``; also ``python -m ouroboros3d.cli``).

Subcommands:

* ``generate IMAGE``: image-to-3D for your own picture, written to ``outputs/<image stem>/``
  (see :mod:`ouroboros3d.generate`).

Errors a user can cause (a file that is not an image, an image with nothing but background,
a missing or mismatching checkpoint, an unavailable device) print one ``error: ...`` line on
stderr and exit with status 2; ``--debug`` shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["build_parser", "main"]

GENERATE_HELP = """\
Generate the views of the object in IMAGE and its 3D Gaussians.

IMAGE is a PNG or JPEG of any size. With an alpha channel (RGBA), the alpha is the object
mask and the object is composited on white. Without one (RGB), the object must be on a
plain, near-white background: pixels close to white are taken as background. The object is
cropped to its mask, centred and rescaled to fill the frame as in the training renders,
then resized to the model's resolution.

Writes to --out (default outputs/<image stem>/): view_00.png ... (the generated views,
view 0 is the input view), input.png, grid.png, gaussians.ply (3DGS), turntable.gif (and
turntable.mp4 when ffmpeg is on PATH), steps.png (denoising steps) and generation.json.
"""


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="image-to-3D for your own picture",
        description=GENERATE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", type=Path, help="PNG/JPEG: RGBA (alpha = object mask) or RGB on a near-white background")
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=Path("models/main"),
        help="folder with model.safetensors + params.json, or the .safetensors file (default: models/main)",
    )
    p.add_argument("--out", type=Path, default=None, help="output folder (default: outputs/<image stem>/)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the checkpoint's, 25)")
    p.add_argument(
        "--elevation",
        type=float,
        default=None,
        help="camera elevation in degrees for all views (default: the middle of the checkpoint's "
        "data.eval.elevation_deg, 10 for cpu-small; the model was trained on data.train.elevation_deg)",
    )
    p.add_argument("--seed", type=int, default=0, help="noise seed; the same seed gives the same views (default 0)")
    p.add_argument(
        "--no-feedback",
        action="store_true",
        help="zero the 3D feedback maps at every step (plain multi-view diffusion, for comparison)",
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="default: cpu")
    p.add_argument("--turntable-frames", type=int, default=36, help="frames of the 360° turntable (0: none)")
    p.add_argument("--strip-steps", type=int, default=5, help="denoising steps shown in steps.png (default 5)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    p.set_defaults(func=_run_generate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ouroboros3d", description="Ouroboros3D: image-to-3D by 3D-aware recursive diffusion."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_generate(sub)
    return parser


def _run_generate(args: argparse.Namespace) -> int:
    from .generate import generate, write_outputs

    if args.steps is not None and args.steps < 1:
        raise _UsageError(f"--steps must be >= 1, got {args.steps}")
    if args.turntable_frames < 0:
        raise _UsageError(f"--turntable-frames must be >= 0, got {args.turntable_frames}")
    start = time.perf_counter()
    result = generate(
        args.image,
        checkpoint=args.checkpoint,
        steps=args.steps,
        elevation=args.elevation,
        seed=args.seed,
        feedback=not args.no_feedback,
        device=args.device,
        strip_steps=args.strip_steps,
        progress=not args.quiet and sys.stderr.isatty(),
    )
    out_dir = args.out if args.out is not None else Path("outputs") / args.image.stem
    files = write_outputs(result, out_dir, turntable=args.turntable_frames)
    if not args.quiet:
        for note in result.notes:
            print(f"note: {note}", file=sys.stderr)
        t = result.timings
        print(
            f"wrote {len(files)} files to {out_dir} in {time.perf_counter() - start:.1f} s "
            f"(sampling {t['sample']:.1f} s for {result.settings['steps']} steps, "
            f"{result.settings['num_gaussians']} Gaussians)"
        )
    return 0


class _UsageError(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 a user error, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if getattr(args, "debug", False):
            raise
        from .generate import GenerationError

        message = " ".join(str(e).split())
        if not isinstance(e, GenerationError | _UsageError):
            message = f"{type(e).__name__}: {message} (run with --debug for the traceback)"
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
