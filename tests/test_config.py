"""params.yaml is read into typed, validated dataclasses with errors that name the key."""

from pathlib import Path

import pytest
import yaml

from ouroboros3d.config import ParamsError, load_params, params_from_dict

ROOT = Path(__file__).resolve().parents[1]


def _raw():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_repository_params_load_and_validate():
    p = load_params(ROOT / "params.yaml")
    assert p.preset == "cpu-small"
    assert p.camera.num_views == 8 and p.camera.view_frames[0] == 0
    assert p.feedback_ccm and p.feedback_rgb


@pytest.mark.parametrize("preset", ["cpu-small", "gpu-medium", "paper"])
def test_every_preset_resolves(preset):
    raw = _raw()
    raw["preset"] = preset
    p = params_from_dict(raw)
    assert p.preset == preset
    assert p.data.resolution == {"cpu-small": raw["data"]["resolution"], "gpu-medium": 128, "paper": 512}[preset]


def test_ablation_switches_are_one_change_each():
    raw = _raw()
    raw["feedback"] = False
    p = params_from_dict(raw)
    assert not p.feedback_ccm and not p.feedback_rgb
    raw["feedback"], raw["feedback_maps"] = True, ["ccm"]
    p = params_from_dict(raw)
    assert p.feedback_ccm and not p.feedback_rgb


@pytest.mark.parametrize(
    "change,message",
    [
        ({"seed": -1}, "seed"),
        ({"feedback_maps": ["depth"]}, "feedback_maps"),
        ({"feedback_maps": []}, "no map is fed back"),
        ({"feedback": "yes"}, "feedback: must be true or false"),
        ({"preset": "huge"}, "unknown preset"),
        ({"camera": {"fov_deg": 200}}, "camera.fov_deg"),
        ({"camera": {"view_frames": [1, 2, 3]}}, "input view"),
        ({"data": {"resolution": 60}}, "multiple of 8"),
        ({"data": {"train": {"source": "objaverse"}}}, "data.train.source"),
        ({"data": {"eval": {"elevation_deg": [30, 10]}}}, "data.eval.elevation_deg"),
        ({"data": {"train": {"source": "folder"}}}, "no folder is set"),
        ({"ccm": {"scale": -1}}, "ccm.scale"),
        ({"data": {"resolutoin": 64}}, "data.resolutoin"),
        ({"typo": 1}, "unknown key"),
    ],
)
def test_bad_values_name_the_key(change, message):
    from ouroboros3d.config import _deep_merge

    with pytest.raises(ParamsError, match=message):
        params_from_dict(_deep_merge(_raw(), change))


def test_missing_and_malformed_files_are_clear(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("seed: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
