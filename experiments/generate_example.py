"""DVC stage `generate_example`: the README's pictures of `ouroboros3d generate`.

Runs the user-facing generation on one eval render (RGB + alpha as RGBA, as a user would
pass a cut-out photo) with the main model, and writes its grid to paper/figures/; then meshes
the Gaussians as `generate --mesh` does and writes the mesh, rendered from four sides, beside it.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ouroboros3d.data.render import render_views
from ouroboros3d.errors import ArgumentParser, guard
from ouroboros3d.files import atomic_write_bytes
from ouroboros3d.gaussians.meshing import MeshError, write_mesh
from ouroboros3d.geometry import cameras
from ouroboros3d.inference.generate import generate, write_outputs
from ouroboros3d.inference.pipeline import surface_mesh


def mesh_picture(mesh, size: int = 192, azimuths=(0.0, 90.0, 180.0, 270.0), elevation: float = 20.0) -> bytes:
    """``mesh`` rendered (vertex colours, the dataset's light rig) from ``azimuths``, side by side, as PNG."""
    c2w = cameras.orbit_c2w(torch.tensor(azimuths), torch.tensor(elevation), 2.2).float()
    K = cameras.intrinsics(39.6, size).expand(len(azimuths), 3, 3)
    views = render_views(mesh, K, c2w, size, size)
    buffer = io.BytesIO()
    Image.fromarray(np.concatenate(list(views.rgb), axis=1)).save(buffer, format="PNG")
    return buffer.getvalue()


def note_picture(text: str, size: tuple[int, int] = (768, 192)) -> bytes:
    """A PNG that says ``text``: the mesh figure of a model whose Gaussians give no surface."""
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).multiline_text((12, size[1] // 2 - 12), text, fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@guard
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--renders", default="data/renders/eval")
    parser.add_argument("--object", default="ycb-006_mustard_bottle", help="falls back to the first eval object")
    parser.add_argument("--checkpoint", default="models/main")
    parser.add_argument("--elevation", type=float, default=3.0)
    parser.add_argument("--out", default="paper/figures/generate_example.png")
    parser.add_argument("--mesh-out", default="paper/figures/generate_example_mesh.png")
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
    try:
        mesh = surface_mesh(result.gaussians, result.params)  # what `generate --mesh` writes
    except MeshError as error:  # an (almost) untrained model, e.g. the tests' tiny config
        atomic_write_bytes(args.mesh_out, note_picture(f"no mesh for this model:\n{error}"))
        print(f"wrote {args.out}; no mesh: {error}")
        return 0
    write_mesh(mesh, args.work)
    atomic_write_bytes(args.mesh_out, mesh_picture(mesh))
    print(f"wrote {args.out} and {args.mesh_out} ({len(mesh.faces)} faces; {sum(result.timings.values()):.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
