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


def test_paper_preset_builds_table_1_shapes_and_lgm_sized_reconstructor_on_meta():
    import torch

    from ouroboros3d.build import build_reconstructor, denoiser_kwargs
    from ouroboros3d.models.denoiser import MultiViewDenoiser

    raw = _raw()
    raw["preset"] = "paper"
    # SVD's CLIP encoder loads only from a local folder this machine lacks: the CNN stands in
    raw["presets"]["paper"]["model"]["denoiser"]["image_encoder"] = "cnn"
    p = params_from_dict(raw)
    kwargs = denoiser_kwargs(p)
    assert (kwargs["sample_size"], kwargs["feedback_unshuffle"], kwargs["latent_channels"]) == (64, 8, 4)
    with torch.device("meta"):
        net = MultiViewDenoiser(**kwargs)
        features = net.feedback_networks["ccm"](torch.empty(1, 3, 512, 512))
        recon = build_reconstructor(p)
    assert [tuple(f.shape[1:]) for f in features] == [(320, 64, 64), (640, 32, 32), (1280, 16, 16), (1280, 8, 8)]
    assert recon.num_gaussians == 4 * 128 * 128  # LGM: 65,536 Gaussians
