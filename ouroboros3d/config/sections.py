"""The sections of params.yaml besides ``model``: cameras, CCMs, data, training, sampling, evaluation.

One frozen dataclass per section, its defaults ``cpu-small``'s. Each ``validate(key)`` checks its
ranges and the combinations its code needs, naming the dotted ``key`` of the value at fault;
:meth:`ouroboros3d.config.params.Params.validate` calls them in turn, once the types are checked
(:mod:`ouroboros3d.config.conversion`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from ..geometry.ccm import CCMNormalization
from .errors import _check

__all__ = [
    "SOURCES",
    "CCMParams",
    "CameraParams",
    "DataParams",
    "EvaluationParams",
    "PretrainParams",
    "SampleParams",
    "SplitParams",
    "TrainSettings",
]

SOURCES = ("random_urdfs", "ycb", "libero", "folder")


@dataclass(frozen=True)
class CameraParams:
    radius: float = 2.2
    fov_deg: float = 39.6
    orbit_frames: int = 16
    view_frames: tuple[int, ...] = (0, 2, 4, 6, 8, 10, 12, 15)

    def validate(self, key: str) -> None:
        _check(self.radius > 0.9, f"{key}.radius", f"must exceed the unit box's reach (0.87), got {self.radius}")
        _check(0 < self.fov_deg < 180, f"{key}.fov_deg", f"must be in (0, 180), got {self.fov_deg}")
        _check(self.orbit_frames >= 1, f"{key}.orbit_frames", "must be >= 1")
        _check(len(self.view_frames) >= 2, f"{key}.view_frames", "need at least 2 views")
        _check(self.view_frames[0] == 0, f"{key}.view_frames", "the first view must be frame 0 (the input view)")
        _check(
            all(0 <= f < self.orbit_frames for f in self.view_frames),
            f"{key}.view_frames",
            f"frames must lie in [0, {self.orbit_frames}), got {list(self.view_frames)}",
        )
        _check(len(set(self.view_frames)) == len(self.view_frames), f"{key}.view_frames", "frames must be distinct")

    @property
    def num_views(self) -> int:
        return len(self.view_frames)


@dataclass(frozen=True)
class CCMParams(CCMNormalization):
    """The ``ccm`` section: the one global CCM normalisation. Its fields, defaults and ranges are
    :class:`~ouroboros3d.geometry.ccm.CCMNormalization`'s, stated there once.

    Unlike a plain CCMNormalization it is not checked when built: like every section it is checked
    by ``validate``, from :meth:`Params.validate <ouroboros3d.config.params.Params.validate>`, so the
    error names the key, the checks run in the same order as the other sections', and the presets
    that are not selected are checked for types only.
    """

    def __post_init__(self) -> None:
        """Nothing: ``validate`` checks the ranges, naming the key (see the class docstring)."""

    def validate(self, key: str) -> None:
        for name, problem in self.range_problems().items():  # the first stops, as every check does
            _check(False, f"{key}.{name}", problem)

    @property
    def normalization(self) -> CCMNormalization:
        """The plain (and so checked) :class:`CCMNormalization` that the model and the data take."""
        return CCMNormalization(**dataclasses.asdict(self))


@dataclass(frozen=True)
class SplitParams:
    source: Literal["random_urdfs", "ycb", "libero", "folder"] = "random_urdfs"
    max_objects: int = 200
    elevation_deg: tuple[float, float] = (-5.0, 30.0)
    # train only: real (YCB) objects that are in neither val nor eval, each rendered along
    # `real_orbits` random orbits, added to the split (the eval objects are real scans)
    real_objects: int = 0
    real_orbits: int = 1
    # train only: textured `libero` scans (GSO-style and HOPE) added the same way, along
    # `real_orbits` orbits each; the scans not chosen stay for `data.eval_textured`
    textured_objects: int = 0

    def validate(self, key: str) -> None:
        _check(self.source in SOURCES, f"{key}.source", f"must be one of {SOURCES}, got {self.source!r}")
        _check(self.max_objects >= 1, f"{key}.max_objects", f"must be >= 1, got {self.max_objects}")
        _check(self.real_objects >= 0, f"{key}.real_objects", f"must be >= 0, got {self.real_objects}")
        _check(self.real_orbits >= 1, f"{key}.real_orbits", f"must be >= 1, got {self.real_orbits}")
        _check(self.textured_objects >= 0, f"{key}.textured_objects", f"must be >= 0, got {self.textured_objects}")
        lo, hi = self.elevation_deg
        _check(-89 < lo <= hi < 89, f"{key}.elevation_deg", f"need -89 < low <= high < 89, got {[lo, hi]}")


@dataclass(frozen=True)
class DataParams:
    resolution: int = 64
    workers: int = 2
    min_objects: int = 4
    train: SplitParams = field(default_factory=SplitParams)
    # objects for choosing settings (learning study, sweeps): never trained on, never evaluated
    val: SplitParams = field(default_factory=lambda: SplitParams("ycb", 10, (0.0, 20.0)))
    eval: SplitParams = field(default_factory=lambda: SplitParams("ycb", 40, (0.0, 20.0)))
    eval_textured: bool = False
    folder: str | None = None

    def validate(self, key: str) -> None:
        _check(8 <= self.resolution <= 2048, f"{key}.resolution", f"must be in [8, 2048], got {self.resolution}")
        _check(self.resolution % 8 == 0, f"{key}.resolution", f"must be a multiple of 8, got {self.resolution}")
        _check(self.workers >= 1, f"{key}.workers", "must be >= 1")
        _check(self.min_objects >= 1, f"{key}.min_objects", "must be >= 1")
        self.train.validate(f"{key}.train")
        self.val.validate(f"{key}.val")
        self.eval.validate(f"{key}.eval")
        for split in ("val", "eval"):
            only_train = "only the train split adds real objects"
            for added in ("real_objects", "textured_objects"):
                _check(getattr(getattr(self, split), added) == 0, f"{key}.{split}.{added}", only_train)
        uses_folder = "folder" in (self.train.source, self.val.source, self.eval.source)
        _check(
            not uses_folder or bool(self.folder), f"{key}.folder", "a split uses source 'folder' but no folder is set"
        )


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 600
    batch_size: int = 2
    lr: float = 2e-4
    weight_decay: float = 0.01
    warmup_steps: int = 20
    lr_decay_fraction: float = 1.0  # cosine decay to 10% over this last share of the steps, constant before
    ema_decay: float = 0.99
    grad_clip: float = 1.0
    cond_dropout: float = 0.1  # conditioning dropout, for classifier-free guidance
    feedback_prob: float = 0.5  # Algorithm 1: probability of the second pass with feedback
    p_mean: float = 1.0  # ln sigma ~ N(p_mean, p_std^2), eq. above (5)
    p_std: float = 1.6
    # (share, p_mean, p_std): that share of the training noise levels from a second log-normal
    noise_mixture: tuple[float, float, float] | None = None
    recon_weight: float = 1.0
    alpha_weight: float = 1.0
    lpips_weight: float = 0.0  # 0 on CPU: LPIPS needs pretrained weights this machine cannot fetch
    checkpoint_every: int = 50
    log_every: int = 10
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    recolour: bool = False  # permute each object's RGB channels, the same in all its views
    # share of each batch drawn from the real scans of the train split (the rest: procedural
    # objects); null: batches drawn from all objects alike (the split's own share)
    real_share: float | None = None
    validate_every: int = 0  # score the EMA on the val split every N steps (learning curve); 0: at the end

    def validate(self, key: str) -> None:
        for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
            _check(getattr(self, name) >= 1, f"{key}.{name}", "must be >= 1")
        _check(self.lr > 0, f"{key}.lr", "must be positive")
        _check(0 <= self.ema_decay < 1, f"{key}.ema_decay", "must lie in [0, 1)")
        for name in ("cond_dropout", "feedback_prob", "lr_decay_fraction"):
            _check(0 <= getattr(self, name) <= 1, f"{key}.{name}", "must lie in [0, 1]")
        _check(self.p_std > 0, f"{key}.p_std", "must be positive")
        # clip_grad_norm_ to 0 would zero every gradient: training that silently learns nothing
        _check(self.grad_clip > 0, f"{key}.grad_clip", f"must be positive, got {self.grad_clip}")
        if self.real_share is not None:
            _check(0 <= self.real_share <= 1, f"{key}.real_share", f"must lie in [0, 1], got {self.real_share}")
        if self.noise_mixture is not None:
            share, _, std = self.noise_mixture
            _check(0 <= share <= 1 and std > 0, f"{key}.noise_mixture", "needs [share in [0, 1], p_mean, p_std > 0]")
        for name in (
            "recon_weight",
            "alpha_weight",
            "lpips_weight",
            "weight_decay",
            "warmup_steps",
            "validate_every",
        ):
            _check(getattr(self, name) >= 0, f"{key}.{name}", "must be >= 0")


@dataclass(frozen=True)
class PretrainParams:
    """The components' pretraining, once, before every Table 2 model is fine-tuned from them:
    F as plain multi-view diffusion (the paper's SVD) and G on ground-truth views (its LGM)."""

    denoiser: TrainSettings = field(default_factory=TrainSettings)
    reconstructor: TrainSettings = field(default_factory=TrainSettings)
    # a second publication of F that starts from the first (``models/pretrain/denoiser``), so
    # each stays reproducible from its own start (dvc.yaml: the fine-tunes start from it);
    # null: no second publication (``train.py --pretrain denoiser_continued`` then says so)
    denoiser_continued: TrainSettings | None = None

    def validate(self, key: str) -> None:
        self.denoiser.validate(f"{key}.denoiser")
        self.reconstructor.validate(f"{key}.reconstructor")
        if self.denoiser_continued is not None:
            self.denoiser_continued.validate(f"{key}.denoiser_continued")


@dataclass(frozen=True)
class SampleParams:
    steps: int = 25
    sigma_min: float = 0.002
    sigma_max: float = 700.0
    guidance: tuple[float, float] = (1.0, 2.5)  # SVD's per-view scale, input view to last view
    guidance_sigmas: tuple[float, float] | None = None  # guide only at sigma in [lo, hi]; null: every step
    feedback_start: float = 0.0  # feed back from this fraction of the steps on (Table 3)
    sampler: Literal["euler", "heun", "euler_churn"] = "euler"  # euler_churn: EDM's stochastic sampler
    mixed_precision: Literal["no", "bf16"] = "no"  # autocast F and G in sampling (EDM, rays, rasterizer stay fp32)

    def validate(self, key: str) -> None:
        _check(self.steps >= 1, f"{key}.steps", "must be >= 1")
        _check(0 < self.sigma_min < self.sigma_max, f"{key}.sigma_min", "need 0 < sigma_min < sigma_max")
        _check(min(self.guidance) >= 1.0, f"{key}.guidance", f"scales must be >= 1, got {list(self.guidance)}")
        _check(0 <= self.feedback_start <= 1, f"{key}.feedback_start", "must lie in [0, 1]")
        lo, hi = self.guidance_sigmas or (0.0, 0.0)
        _check(0 <= lo <= hi, f"{key}.guidance_sigmas", f"need 0 <= lo <= hi, got {self.guidance_sigmas}")


@dataclass(frozen=True)
class EvaluationParams:
    """Settings of the evaluation (experiments/evaluate.py, ouroboros3d.evaluation.metrics); not of the model."""

    batch_size: int = 4  # objects sampled together; each has its own seeded noise
    gt_points: int = 50_000  # points sampled on each ground-truth mesh surface (seeded per object)
    fscore_thresholds: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1)  # unit-box units
    step_objects: int = 3  # eval objects whose per-step reconstructions are recorded (Figure 3)
    feedback_starts: tuple[float, ...] = (0.4, 0.8, 1.0)  # Table 3: inference-only feedback windows
    confidence: float = 0.95  # of the t-interval over objects
    mesh_metrics: bool = True  # Table 2 runs: mesh Chamfer/F-score and volume IoU (ouroboros3d.evaluation.metrics)
    iou_grid: int = 64  # voxels per side of the volume-IoU grid (SyncDreamer's 64)

    def validate(self, key: str) -> None:
        for name in ("batch_size", "gt_points", "iou_grid"):
            _check(getattr(self, name) >= 1, f"{key}.{name}", "must be >= 1")
        _check(self.step_objects >= 0, f"{key}.step_objects", "must be >= 0")
        _check(
            bool(self.fscore_thresholds) and all(t > 0 for t in self.fscore_thresholds),
            f"{key}.fscore_thresholds",
            f"need positive thresholds, got {list(self.fscore_thresholds)}",
        )
        _check(
            all(0 <= s <= 1 for s in self.feedback_starts),
            f"{key}.feedback_starts",
            f"must lie in [0, 1], got {list(self.feedback_starts)}",
        )
        _check(0 < self.confidence < 1, f"{key}.confidence", f"must lie in (0, 1), got {self.confidence}")
