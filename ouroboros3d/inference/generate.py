"""Image-to-3D for a user's picture in one call, from a notebook: :func:`generate`, and :func:`write_outputs`.

::

    from ouroboros3d.inference.generate import generate, write_outputs

    result = generate("mug.png", "models/main", steps=25, seed=0)
    result.views        # (V, 3, H, W) in [0, 1], view 0 is the input view
    result.gaussians    # ouroboros3d.gaussians.container.Gaussians with B = 1
    result.settings     # a GenerationSettings: seed, steps, elevation_deg, checkpoint, ...
    write_outputs(result, "outputs/mug")

    result = generate("mug.png", mesh=True)   # also meshes the Gaussians (ouroboros3d.gaussians.meshing)
    result.mesh         # trimesh.Trimesh with vertex colours; write_outputs adds mesh.glb, mesh.obj

:func:`generate` loads the model folder and calls the pipeline: for many images load it once and call it
(``pipe = Ouroboros3DPipeline.from_pretrained("models/main"); pipe("mug.png", seed=0)``), or give
``generate`` the loaded pipeline. The work is :meth:`Ouroboros3DPipeline.__call__
<ouroboros3d.inference.pipeline.Ouroboros3DPipeline.__call__>`; the files are
:mod:`~ouroboros3d.inference.exports`'. Every user-facing failure (not an image, nothing but
background, a missing or mismatching checkpoint, an unavailable device, a bad option) raises
:class:`~ouroboros3d.errors.GenerationError` with a one-line message.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .exports import write_outputs
from .model_folder import DEFAULT_CHECKPOINT
from .pipeline import Ouroboros3DPipeline
from .result import GenerationResult

__all__ = ["GenerationResult", "Ouroboros3DPipeline", "generate", "write_outputs"]


def generate(
    image: str | Path | Image.Image | np.ndarray,
    checkpoint: str | Path | Ouroboros3DPipeline = DEFAULT_CHECKPOINT,
    *,
    device: str = "cpu",
    **options: Any,
) -> GenerationResult:
    """Generate the V views and the 3D Gaussians of the object in ``image`` (Algorithm 2) with a model.

    ``checkpoint`` is a model folder (what the train stage writes: see :mod:`ouroboros3d.inference.pipeline`),
    loaded on ``device`` ("cpu" or "cuda"; its seconds go to ``result.timings["load_checkpoint"]``),
    or an :class:`~ouroboros3d.inference.pipeline.Ouroboros3DPipeline` loaded already (``device``
    is then ignored). ``options`` are :meth:`Ouroboros3DPipeline.__call__
    <ouroboros3d.inference.pipeline.Ouroboros3DPipeline.__call__>`'s: ``steps``, ``elevation``, ``seed``,
    ``feedback``, ``strip_steps``, ``progress``, ``mesh`` and ``mesh_resolution``.
    """
    if isinstance(checkpoint, Ouroboros3DPipeline):
        return checkpoint(image, **options)
    t0 = time.perf_counter()
    pipe = Ouroboros3DPipeline.from_pretrained(checkpoint, device=device)
    load_seconds = time.perf_counter() - t0
    result = pipe(image, **options)
    result.timings["load_checkpoint"] = load_seconds
    return result
