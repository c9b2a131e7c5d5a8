"""Typed, validated parameters: ``params.yaml`` is read here and nowhere else.

``load_params`` deep-merges the block ``presets[preset]`` over the top-level sections,
builds the dataclasses below and validates every value, so a typo or an out-of-range
value stops with a message naming the key (``ParamsError``), before any work starts.

The checks come in two layers. Generic ones, once for every param: the file is UTF-8 YAML
(:func:`load_params`) whose top level, ``presets`` and preset blocks are mappings
(:func:`params_from_dict`) with string keys and no alias inside itself (``_check_tree``),
and every value has its field's annotated type (``_convert``, also for the inactive presets):
bool is not an int, a string is not a number, ints fit in 64 bits and floats are finite
(no param gives NaN or inf a meaning). Then each dataclass's ``validate`` checks its ranges
and the combinations its code needs (e.g. UNet widths that GroupNorm and the attention
heads divide), so an impossible model is refused here, not by a ZeroDivisionError later.

The modules, each importing only those listed before it (and ``geometry``, ``errors`` and
:mod:`ouroboros3d.models.architecture`, the networks' torch-free rules):

* ``errors``: :class:`ParamsError` and the one check that raises it, naming the key;
* ``conversion``: the generic layer, plain YAML data to typed dataclasses (``_build``);
* ``sections``: the sections but ``model`` (camera, ccm, data, train, pretrain, sample, evaluation);
* ``networks``: the ``model`` section, F's and G's architecture and their checks;
* ``params``: :class:`Params`, the whole, with its variants and pretraining params;
* ``loading``: params.yaml and params.json to :class:`Params`, and back to plain data.

Everything is imported from here (``from ouroboros3d.config import Params``); the modules are
the layout, not the interface.
"""

from .conversion import INT_RANGE, to_plain
from .conversion import _deep_merge as _deep_merge  # private, but tests and scripts/paper_route.py use it
from .errors import ParamsError
from .loading import (
    RESOLVED_PARAMS,
    load_params,
    params_from_dict,
    params_from_resolved,
    read_yaml,
    resolved_params,
)
from .networks import (
    DENOISER_DOWN_BLOCKS,
    DENOISER_NORM_GROUPS,
    DENOISER_UP_BLOCKS,
    SMALL_DOWN_BLOCKS,
    SMALL_UP_BLOCKS,
    DenoiserParams,
    ModelParams,
    ReconstructorParams,
)
from .networks import _group_norm_groups as _group_norm_groups  # private; tests/test_params_checks.py uses it
from .params import FEEDBACK_MAPS, SEED_LIMIT, VARIANT_KEYS, VARIANT_SWITCHES, Params
from .sections import (
    SOURCES,
    CameraParams,
    CCMParams,
    DataParams,
    EvaluationParams,
    PretrainParams,
    SampleParams,
    SplitParams,
    TrainSettings,
)

__all__ = [
    "DENOISER_DOWN_BLOCKS",
    "DENOISER_NORM_GROUPS",
    "DENOISER_UP_BLOCKS",
    "FEEDBACK_MAPS",
    "INT_RANGE",
    "RESOLVED_PARAMS",
    "SEED_LIMIT",
    "SMALL_DOWN_BLOCKS",
    "SMALL_UP_BLOCKS",
    "SOURCES",
    "VARIANT_KEYS",
    "VARIANT_SWITCHES",
    "CCMParams",
    "CameraParams",
    "DataParams",
    "DenoiserParams",
    "EvaluationParams",
    "ModelParams",
    "Params",
    "ParamsError",
    "PretrainParams",
    "ReconstructorParams",
    "SampleParams",
    "SplitParams",
    "TrainSettings",
    "load_params",
    "params_from_dict",
    "params_from_resolved",
    "read_yaml",
    "resolved_params",
    "to_plain",
]
