"""The ``ouroboros3d`` command (installed by ``pip install -e .``; also ``python -m ouroboros3d``).

Subcommands:

* ``generate IMAGE``: image-to-3D for your own picture, written to ``outputs/<image stem>/``
  (:meth:`Ouroboros3DPipeline.__call__ <ouroboros3d.inference.pipeline.Ouroboros3DPipeline.__call__>`,
  then :func:`~ouroboros3d.inference.exports.write_outputs`). ``generate FOLDER|GLOB|IMAGE...`` does every PNG/JPEG
  image named, loading the model once, into ``outputs/<image stem>/`` each.

Exit status: 0 every image done (or skipped by ``--skip-existing``); 1 some images failed,
each reported as one ``error: <image>: <why>`` line, and the others were written; 2 a usage
error (a bad option, no images found, a missing or mismatching checkpoint, an unavailable
device) or no image could be done; 130 interrupted. Expected errors print one ``error: ...``
line on stderr through the project's one error boundary (:func:`ouroboros3d.errors.guard`);
``--debug`` shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import functools
import glob
import sys
import time
import warnings
from pathlib import Path

from ..errors import EXIT_USAGE, ArgumentParser, GenerationError, UserError, expected_errors, guard, one_line
from .options import MAX_MESH_RESOLUTION, MAX_STEPS, MIN_MESH_RESOLUTION, check_options, check_seed

__all__ = ["EXIT_SOME_FAILED", "build_parser", "find_images", "is_finished", "main"]

EXIT_SOME_FAILED = 1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MESH_FILES = ("mesh.glb", "mesh.obj")
# 2 frames a degree: 60 s of GIF at 12 fps; every frame is rendered and held in memory before encoding
MAX_TURNTABLE_FRAMES = 720

GENERATE_HELP = """\
Generate the views of the object in IMAGE and its 3D Gaussians.

IMAGE is a PNG or JPEG of any size. With an alpha channel (RGBA), the alpha is the object
mask and the object is composited on white. Without one (RGB), the object must be on a
plain, near-white background: pixels close to white are taken as background. The object is
cropped to its mask, centred and rescaled to fill the frame as in the training renders,
then resized to the model's resolution.

Writes to --out (default outputs/<image stem>/): view_00.png ... (the generated views,
view 0 is the input view), input.png, grid.png, gaussians.ply (3DGS), turntable.gif (and
turntable.mp4 when ffmpeg is on PATH), steps.png (denoising steps) and generation.json
(written last, with every file's checksum). --mesh adds mesh.glb and mesh.obj. The files
are written into a temporary folder beside --out and renamed into place at once: --out is
a new or empty folder, or an earlier generation's, which is replaced whole (a folder with
other files in it is refused). Two runs into one folder never mix: the one that finishes
second is refused. Every option is checked before the model loads.

Many images: name several files, a folder (its .png/.jpg/.jpeg files) or a quoted glob
("photos/*.jpg"). The model loads once; each image goes to <out>/<image stem>/ (--out
default outputs/). An image that fails is reported as "error: <image>: <why>" and the
others still run.

Exit status: 0 all done; 1 some images failed; 2 usage error or nothing could be done.
"""


class UsageError(UserError):
    """A bad command line (an option out of range, no images found): one error line, exit code 2."""


def _seed(text: str) -> int:
    """argparse type of --seed: a whole number in [0, 2^64 - 1] (torch's generators take 64 bits)."""
    try:
        return check_seed(int(text))
    except (ValueError, GenerationError):
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to 2^64-1, got {text!r}") from None


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="image-to-3D for your own pictures",
        description=GENERATE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="PNG/JPEG: RGBA (alpha = object mask) or RGB on a near-white background; or folders, or globs",
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=Path("models/main"),
        help="a model folder as the train stage writes it (model_index.json, params.json, denoiser/, "
        "reconstructor/; default: models/main)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: outputs/<image stem>/); for many images, the folder of their "
        "<image stem>/ folders (default: outputs/)",
    )
    p.add_argument("--skip-existing", action="store_true", help="skip images whose output folder is finished")
    p.add_argument("--mesh", action="store_true", help="also write a coloured mesh: mesh.glb and mesh.obj")
    p.add_argument(
        "--mesh-resolution",
        type=int,
        default=96,
        help=f"voxels per side of the mesh's grid, {MIN_MESH_RESOLUTION} to {MAX_MESH_RESOLUTION} (default 96)",
    )
    p.add_argument(
        "--steps", type=int, default=None, help=f"denoising steps, 1 to {MAX_STEPS} (default: the checkpoint's, 25)"
    )
    p.add_argument(
        "--elevation",
        type=float,
        default=None,
        help="camera elevation in degrees for all views (default: the middle of the checkpoint's "
        "data.eval.elevation_deg, 10 for cpu-small; the model was trained on data.train.elevation_deg)",
    )
    p.add_argument(
        "--seed",
        type=_seed,
        default=0,
        help="noise seed, 0 to 2^64-1; the same seed gives the same views (default 0)",
    )
    p.add_argument(
        "--no-feedback",
        action="store_true",
        help="zero the 3D feedback maps at every step (plain multi-view diffusion, for comparison)",
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="default: cpu")
    p.add_argument(
        "--turntable-frames",
        type=int,
        default=36,
        help=f"frames of the 360° turntable, 0 (none) to {MAX_TURNTABLE_FRAMES} (default 36)",
    )
    p.add_argument("--strip-steps", type=int, default=5, help="denoising steps shown in steps.png (default 5; 0: none)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    p.set_defaults(func=_run_generate)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="ouroboros3d", description="Ouroboros3D: image-to-3D by 3D-aware recursive diffusion.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_generate(sub)
    return parser


# --- which images, and where they go --------------------------------------------------------


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def find_images(sources: list[str]) -> list[Path]:
    """The images that files, folders (their PNG/JPEG files, sorted) and glob patterns name, in order, once each.

    A file is taken as given, even a missing one or another format: it fails when it is read,
    with the reason. A folder or pattern that names no image is a :class:`UsageError`.
    """
    images: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found, what = sorted(p for p in path.iterdir() if _is_image(p)), f"folder {path}"
        elif glob.has_magic(source) and not path.exists():
            found = sorted(p for p in map(Path, glob.glob(source, recursive=True)) if _is_image(p))
            what = f"pattern {source!r}"
        else:
            images.append(path)
            continue
        if not found:
            raise UsageError(f"no PNG/JPEG images in {what}")
        images += found
    return list(dict.fromkeys(images))


def _output_folders(images: list[Path], out: Path | None, single: bool) -> dict[Path, Path]:
    """``{image: its output folder}``; two images with one stem would overwrite each other: a usage error."""
    if single:
        return {images[0]: out if out is not None else Path("outputs") / images[0].stem}
    root = out if out is not None else Path("outputs")
    folders: dict[Path, Path] = {}
    for image in images:
        clash = next((other for other, folder in folders.items() if folder.name == image.stem), None)
        if clash is not None:
            raise UsageError(f"{clash} and {image} would both write to {root / image.stem}: rename one")
        folders[image] = root / image.stem
    return folders


def is_finished(out_dir: Path, mesh: bool = False) -> bool:
    """Whether ``out_dir`` holds one run's finished, intact outputs
    (:func:`~ouroboros3d.inference.output_folder.is_complete`): its generation.json (written last) and
    every file that lists, with the listed checksums, plus the mesh files when ``mesh`` is asked for. A
    leftover of an interrupted run never counts."""
    from .output_folder import is_complete

    return is_complete(out_dir, MESH_FILES if mesh else ())


def _check_out(folders: dict[Path, Path]) -> None:
    """Every output folder can be written (not a file, nor a folder of other files): before any work."""
    from .output_folder import check_output_folder

    for folder in dict.fromkeys(folders.values()):
        try:
            check_output_folder(folder)
        except GenerationError as e:
            raise UsageError(f"--out: {one_line(e)}") from None


# --- generation -----------------------------------------------------------------------------


def _check_options(args: argparse.Namespace) -> None:
    """Option values that would fail every image, caught before any work: the generation's
    (:func:`~ouroboros3d.inference.options.check_options`) and the turntable's."""
    checked = ("steps", "elevation", "seed", "strip_steps", "mesh_resolution")
    try:
        check_options(**{name: getattr(args, name) for name in checked}, flags=True)
    except GenerationError as e:
        raise UsageError(str(e)) from None
    if args.turntable_frames < 0:
        raise UsageError(f"--turntable-frames must be >= 0, got {args.turntable_frames}")
    if args.turntable_frames > MAX_TURNTABLE_FRAMES:
        raise UsageError(f"--turntable-frames must be <= {MAX_TURNTABLE_FRAMES}, got {args.turntable_frames}")


def _generate_one(args: argparse.Namespace, pipe, load_seconds: float, image: Path, out_dir: Path, progress, expect):
    """Generate one image's outputs (and mesh, with --mesh) into ``out_dir``, which was in state ``expect``
    when the command began (:func:`.output_folder.folder_state`: another run writing it since is refused)."""
    from .exports import write_outputs

    result = pipe(
        image,
        steps=args.steps,
        elevation=args.elevation,
        seed=args.seed,
        feedback=not args.no_feedback,
        strip_steps=args.strip_steps,
        progress=progress,
        mesh=args.mesh,
        mesh_resolution=args.mesh_resolution,
    )
    result.timings["load_checkpoint"] = load_seconds  # the model was loaded before, once for all images
    return result, write_outputs(result, out_dir, turntable=args.turntable_frames, expect=expect)


def _failure_line(image: Path, e: Exception) -> str:
    why = " ".join(str(e).split()) or type(e).__name__
    if not isinstance(e, expected_errors()):  # a bug: say where to look
        why = f"{type(e).__name__}: {why} (run with --debug for the traceback)"
    return f"error: {image}: {why}"


def _print_done(result, files: dict, out_dir: Path, seconds: float, prefix: str, write) -> None:
    for note in result.notes:
        write(f"note: {prefix}{note}", file=sys.stderr)
    t, s = result.timings, result.settings
    write(
        f"{prefix}wrote {len(files)} files to {out_dir} in {seconds:.1f} s "
        f"(sampling {t['sample']:.1f} s for {s.steps} steps, {s.num_gaussians} Gaussians)",
        file=sys.stdout,
    )


def _run_generate(args: argparse.Namespace, debug: bool = False) -> int:
    from tqdm.auto import tqdm

    from .images import prepare_image, target_fill
    from .model_folder import read_checkpoint_params
    from .output_folder import folder_state
    from .pipeline import Ouroboros3DPipeline

    # every option, image and output folder is checked before the (slow) model load and sampling
    _check_options(args)
    images = find_images(args.images)
    # one file named on its own is the single-image command: --out is the folder itself and an
    # image's error is the command's error; otherwise every image gets <out>/<stem>/
    single = len(args.images) == 1 and images == [Path(args.images[0])]
    folders = _output_folders(images, args.out, single)
    _check_out(folders)
    states = {o: folder_state(o) for o in folders.values()}  # another run writing one from now on is refused
    todo = {i: o for i, o in folders.items() if not (args.skip_existing and is_finished(o, args.mesh))}
    skipped = len(folders) - len(todo)
    if not todo:
        if not args.quiet:
            print(f"nothing to do: all {skipped} images have finished outputs (--skip-existing)")
        return 0

    start = time.perf_counter()
    _, params = read_checkpoint_params(args.checkpoint)  # a missing checkpoint stops before any image
    failed: list[Path] = []

    def attempt(image: Path, work):
        """``work()``; in a batch, an error is reported on one line and the image dropped."""
        try:
            return work()
        except Exception as e:
            if single or debug:
                raise
            tqdm.write(_failure_line(image, e), file=sys.stderr)
            failed.append(image)

    # every image is read before the (slow) model load: a bad one is reported at once
    for image in todo:
        attempt(image, functools.partial(prepare_image, image, params.data.resolution, target_fill(params)))
    todo = {i: o for i, o in todo.items() if i not in failed}
    if todo:
        t0 = time.perf_counter()
        pipe = Ouroboros3DPipeline.from_pretrained(args.checkpoint, device=args.device)
        load_seconds = time.perf_counter() - t0  # carried by the first image done

    # one bar over the images (a tty only), once every input is checked and the model loaded; the
    # single-image command keeps its bar over steps
    quiet_bar = True if args.quiet or single or not todo else None
    bar = tqdm(total=len(todo), desc="generate", unit="image", disable=quiet_bar)
    for image, out_dir in todo.items():
        t0 = time.perf_counter()
        if single:
            progress = not args.quiet and sys.stderr.isatty()
        else:
            progress = functools.partial(_show_step, bar, image.name)
        expect = states[out_dir]
        work = functools.partial(_generate_one, args, pipe, load_seconds, image, out_dir, progress, expect)
        done = attempt(image, work)
        bar.update(1)
        if done is not None:
            load_seconds = 0.0
            if not args.quiet:
                seconds = time.perf_counter() - (start if single else t0)
                _print_done(*done, out_dir, seconds, "" if single else f"{image}: ", tqdm.write)
    bar.close()
    if not single and not args.quiet:
        ok = len(folders) - skipped - len(failed)
        elapsed = time.perf_counter() - start
        print(f"{ok} of {len(folders)} images done in {elapsed:.1f} s ({skipped} skipped, {len(failed)} failed)")
    if not failed:
        return 0
    return EXIT_SOME_FAILED if len(failed) < len(folders) else EXIT_USAGE


def _show_step(bar, name: str, info: dict) -> None:
    bar.set_postfix_str(f"{name} step {info['i'] + 1}/{info['steps']}")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # guard drops it before parsing; a batch needs it to stop at an image's error

    def run(args_without_debug: list[str]) -> int:
        args = build_parser().parse_args(args_without_debug)
        if debug:
            return args.func(args, debug=debug)
        # warnings (Pillow's, a tiny object's, a library's) wait until the run is done: a run that
        # fails prints its one error line alone; one that finishes prints them as "warning:" lines
        with warnings.catch_warnings(record=True) as caught:
            code = args.func(args, debug=debug)
        for message in dict.fromkeys(one_line(w.message) for w in caught):
            print(f"warning: {message}", file=sys.stderr)
        return code

    try:
        return guard(run)(argv)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
