"""What a generation produced: :class:`GenerationResult`, and :class:`GenerationSettings`, the record of
how it was made (``generation.json``'s ``settings``).

A leaf of :mod:`ouroboros3d.inference`: the pipeline fills these in, the writers
(:mod:`~ouroboros3d.inference.exports`, :mod:`~ouroboros3d.inference.pictures`) read them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import Params
from ..gaussians.container import Gaussians
from ..sampling import StepRecord
from .images import PreparedImage

__all__ = ["GenerationResult", "GenerationSettings", "InputSettings"]


@dataclass(frozen=True)
class InputSettings:
    """How the user's picture became the input view (:func:`~ouroboros3d.inference.images.prepare_image`)."""

    original_size: tuple[int, int]  # (width, height)
    mask_from: str  # "alpha" or "white background"
    bbox: tuple[int, int, int, int]  # the object's box in the original image: left, top, right, bottom
    fill: float  # the fraction of the frame the box's longer side fills

    @classmethod
    def of(cls, prepared: PreparedImage) -> InputSettings:
        return cls(tuple(prepared.original_size), prepared.mask_from, tuple(prepared.bbox), prepared.fill)


@dataclass(frozen=True)
class GenerationSettings:
    """Everything that made a generation what it is; the fields, in this order, are ``generation.json``'s
    ``settings`` (:meth:`to_json`)."""

    image: str  # the input's description: its path, "PIL image" or "array"
    checkpoint: str | None  # the model folder (None: a pipeline that was not loaded from one)
    preset: str
    device: str
    seed: int
    steps: int
    elevation_deg: float
    radius: float
    fov_deg: float
    azimuths_deg: list[float]
    resolution: int
    feedback: bool  # False: --no-feedback, the feedback maps zeroed at every step
    feedback_start: float  # the sampler's (1.0 with feedback off)
    model_feedback_maps: list[str]
    guidance: list[float]
    sampler: str
    input: InputSettings
    num_gaussians: int
    torch: str  # versions
    python: str

    def to_json(self) -> dict[str, Any]:
        """The settings as JSON data (tuples become lists when dumped)."""
        return dataclasses.asdict(self)


@dataclass
class GenerationResult:
    """What :meth:`Ouroboros3DPipeline.__call__ <ouroboros3d.inference.pipeline.Ouroboros3DPipeline.__call__>`
    produced; tensors are on the CPU."""

    input: PreparedImage
    views: torch.Tensor  # (V, 3, H, W) in [0, 1], view 0 is the input view
    gaussians: Gaussians  # B = 1
    recon_rgb: torch.Tensor  # (V, 3, H, W): the final Gaussians rendered at the views' cameras
    steps: list[StepRecord]  # the kept denoising steps (B = 1), for the step strip
    azimuths: torch.Tensor  # (V,) degrees
    K: torch.Tensor  # (V, 3, 3)
    c2w: torch.Tensor  # (V, 4, 4)
    params: Params
    settings: GenerationSettings
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    notes: list[str] = field(default_factory=list)
    mesh: Any = None  # trimesh.Trimesh with vertex colours when generated with mesh=True, else None
