"""The whole params: :class:`Params`, its top-level switches, the sections and the ablation variants.

``Params.validate`` checks the top-level values and then each section in turn (its ``validate``
names the key); :meth:`Params.with_variant` gives a Table 2 model's params and
:meth:`Params.for_pretraining` a component's pretraining params.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..geometry.cameras import RenderSettings
from ..models.architecture import FEEDBACK_MAPS  # the maps F has feedback networks for
from .conversion import _build, _deep_merge
from .errors import ParamsError, _check
from .networks import ModelParams
from .sections import (
    CameraParams,
    CCMParams,
    DataParams,
    EvaluationParams,
    PretrainParams,
    SampleParams,
    TrainSettings,
)

__all__ = ["FEEDBACK_MAPS", "SEED_LIMIT", "VARIANT_KEYS", "VARIANT_SWITCHES", "Params"]

# params.seed: the training derives torch seeds from it, e.g. ``seed * 1_000_003 + step + 1``
# (ouroboros3d.training.batches), which torch.Generator.manual_seed needs in [-2**63, 2**64)
SEED_LIMIT = 2**32

# top-level params a `variants:` block may override (the rest describe data, sampling, evaluation)
VARIANT_KEYS = ("seed", "feedback", "feedback_maps", "joint", "model", "train")
# ... and the switches it must set: a Table 2 row is its own switches, never the top-level ones,
# so `dvc exp run -S feedback=false` (a change of the main model) leaves every variant as it was
VARIANT_SWITCHES = ("feedback", "feedback_maps", "joint")
# pretraining runs -> the component each trains (experiments/train.py --pretrain RUN)
PRETRAININGS = {"denoiser": "denoiser", "reconstructor": "reconstructor", "denoiser_continued": "denoiser"}


@dataclass(frozen=True)
class Params:
    seed: int = 0
    preset: str = "cpu-small"
    feedback: bool = True
    feedback_maps: tuple[str, ...] = FEEDBACK_MAPS
    joint: bool = True
    camera: CameraParams = field(default_factory=CameraParams)
    ccm: CCMParams = field(default_factory=CCMParams)
    data: DataParams = field(default_factory=DataParams)
    model: ModelParams = field(default_factory=ModelParams)
    pretrain: PretrainParams = field(default_factory=PretrainParams)
    train: TrainSettings = field(default_factory=TrainSettings)
    sample: SampleParams = field(default_factory=SampleParams)
    evaluation: EvaluationParams = field(default_factory=EvaluationParams)
    # Table 2's ablation models: name -> overrides of VARIANT_KEYS over the top-level params,
    # trained as models/<name> by the train_variant stage for the names in train_variants
    variants: dict = field(default_factory=dict)
    train_variants: tuple[str, ...] = ()

    def validate(self) -> None:
        _check(
            0 <= self.seed < SEED_LIMIT,
            "seed",
            f"must lie in [0, 2**32) (training derives 64-bit torch seeds from it), got {self.seed}",
        )
        bad = [m for m in self.feedback_maps if m not in FEEDBACK_MAPS]
        _check(not bad, "feedback_maps", f"unknown maps {bad}; choose from {FEEDBACK_MAPS}")
        _check(
            not self.feedback or bool(self.feedback_maps),
            "feedback_maps",
            "feedback is on but no map is fed back; set feedback=false or name a map",
        )
        self.camera.validate("camera")
        self.ccm.validate("ccm")
        self.data.validate("data")
        _check(self.joint or not self.feedback, "joint", "3D feedback needs joint training (set feedback=false)")
        self.model.validate("model", self.camera.num_views)
        self.pretrain.validate("pretrain")
        self.train.validate("train")
        self.sample.validate("sample")
        self.evaluation.validate("evaluation")
        for name, block in self.variants.items():
            _check(isinstance(block, dict), f"variants.{name}", f"must be a mapping, got {block!r}")
            _check(name != "main", "variants", "'main' is the model of the top-level params; name variants otherwise")
            bad = sorted(set(block) - set(VARIANT_KEYS))
            _check(not bad, f"variants.{name}", f"cannot override {bad}; a variant may set {list(VARIANT_KEYS)}")
            missing = [k for k in VARIANT_SWITCHES if k not in block]
            _check(
                not missing, f"variants.{name}", f"must set {missing}: a variant sets all of {list(VARIANT_SWITCHES)}"
            )
            self.with_variant(name)  # validates the variant's params
        unknown = [v for v in self.train_variants if v not in self.variants]
        _check(not unknown, "train_variants", f"unknown variant(s) {unknown}; have {sorted(self.variants)}")

    def for_pretraining(self, part: str) -> Params:
        """The params component ``part``'s pretraining runs with: no feedback (F alone), and G
        on the ground-truth views (joint off); its settings are ``pretrain.<part>``."""
        _check(part in PRETRAININGS.values(), "pretrain", f"no component {part!r} to pretrain")
        return dataclasses.replace(self, feedback=False, joint=part != "reconstructor")

    def pretraining(self, run: str) -> tuple[str, TrainSettings]:
        """The component a pretraining ``run`` (``denoiser``, ``reconstructor``,
        ``denoiser_continued``) trains, and its settings ``pretrain.<run>``."""
        _check(run in PRETRAININGS, "pretrain", f"no pretraining {run!r}; have {list(PRETRAININGS)}")
        settings = getattr(self.pretrain, run)
        _check(settings is not None, f"pretrain.{run}", "is not set: add the section to run this pretraining")
        return PRETRAININGS[run], settings

    def with_variant(self, name: str) -> Params:
        """The params of variant ``name``: its ``variants`` block deep-merged over these params.

        ``"main"`` is these params. The result has no variants of its own (it is one model).
        """
        if name == "main":
            return self
        _check(name in self.variants, "variants", f"unknown variant {name!r}; have ['main', *{sorted(self.variants)}]")
        raw = dataclasses.asdict(self) | {"variants": {}, "train_variants": ()}
        try:
            params = _build(Params, _deep_merge(raw, self.variants[name]), "")
            params.validate()
        except ParamsError as e:
            raise ParamsError(f"params: variants.{name}: {str(e).removeprefix('params: ')}") from None
        return params

    @property
    def render_settings(self) -> RenderSettings:
        """The camera rig of every object's views: the ``camera`` section at ``data.resolution``."""
        cam = self.camera
        return RenderSettings(self.data.resolution, cam.radius, cam.fov_deg, cam.orbit_frames, tuple(cam.view_frames))

    @property
    def feedback_ccm(self) -> bool:
        return self.feedback and "ccm" in self.feedback_maps

    @property
    def feedback_rgb(self) -> bool:
        return self.feedback and "rgb" in self.feedback_maps
