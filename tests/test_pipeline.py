"""The model saved the way the diffusers ecosystem expects: Ouroboros3DPipeline.save_pretrained and
from_pretrained, the components' configs, the frozen parts referenced by path, and one-line errors."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_params
from safetensors.torch import load_file, save_file

from ouroboros3d.build import build_model, build_reconstructor, initialise
from ouroboros3d.errors import GenerationError
from ouroboros3d.files import WEIGHTS_NAME
from ouroboros3d.inference.generate import generate
from ouroboros3d.inference.pipeline import Ouroboros3DPipeline
from ouroboros3d.models.denoiser import MultiViewDenoiser
from ouroboros3d.models.reconstructor import Reconstructor

STEPS = 2


def _image() -> np.ndarray:
    rgba = np.zeros((48, 64, 4), np.uint8)
    rgba[10:40, 20:50] = (200, 40, 40, 255)
    return rgba


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny model (seed 0), its folder written by save_pretrained, and its params."""
    params = tiny_params()
    torch.manual_seed(0)
    model = build_model(params)
    folder = Ouroboros3DPipeline.from_model(model, params).save_pretrained(tmp_path_factory.mktemp("m") / "model")
    return model, folder, params


def _tensors(folder: Path, part: str) -> dict[str, torch.Tensor]:
    return load_file(str(folder / part / WEIGHTS_NAME))


def test_the_folder_has_the_diffusers_layout(saved):
    _, folder, params = saved
    names = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    assert names == {
        "model_index.json",
        "params.json",
        "README.md",
        "denoiser/config.json",
        f"denoiser/{WEIGHTS_NAME}",
        "reconstructor/config.json",
        f"reconstructor/{WEIGHTS_NAME}",
    }
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "Ouroboros3DPipeline"
    assert index["denoiser"] == ["ouroboros3d.models.denoiser", "MultiViewDenoiser"]
    assert index["reconstructor"] == ["ouroboros3d.models.reconstructor", "Reconstructor"]
    assert index["vae"] == [None, None]  # pixel space: no VAE
    assert json.loads((folder / "params.json").read_text()) == json.loads(json.dumps(dataclasses.asdict(params)))
    assert json.loads((folder / "denoiser" / "config.json").read_text())["_class_name"] == "MultiViewDenoiser"


def test_loaded_pipeline_generates_the_same_views_as_the_model_loaded_the_old_way(saved):
    model, folder, params = saved
    # the old way: build_model, then the whole state dict of the same weights
    torch.manual_seed(1)  # another init, so that only the loaded weights can make the views equal
    old = build_model(params)
    old.load_state_dict(model.state_dict())
    old_pipe = Ouroboros3DPipeline.from_model(old.eval(), params)
    loaded = Ouroboros3DPipeline.from_pretrained(folder)
    assert not loaded.model.training and loaded.device.type == "cpu" and loaded.name_or_path == str(folder)
    assert set(loaded.components) == {"denoiser", "reconstructor", "vae"} and loaded.vae is None
    assert loaded.to("cpu") is loaded  # DiffusionPipeline.to moves the components

    image = _image()
    a = generate(image, old_pipe, steps=STEPS, seed=3)
    b = generate(image, loaded, steps=STEPS, seed=3)
    d = generate(image, folder, steps=STEPS, seed=3)  # the folder itself: from_pretrained
    for other in (b, d):
        assert torch.equal(a.views, other.views)
        assert torch.equal(a.gaussians.means, other.gaussians.means)
        assert torch.equal(a.recon_rgb, other.recon_rgb)
    assert not torch.equal(a.views, generate(image, loaded, steps=STEPS, seed=4).views)  # the seed matters
    assert d.settings.checkpoint == str(folder)


def test_from_pretrained_holds_the_saved_weights_and_params(saved):
    model, folder, params = saved
    ckpt = Ouroboros3DPipeline.from_pretrained(folder)
    assert isinstance(ckpt, Ouroboros3DPipeline) and ckpt.params == dataclasses.replace(
        params, variants={}, train_variants=()
    )
    ours, theirs = ckpt.model.state_dict(), model.state_dict()
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_saved_weights_are_every_trainable_tensor(saved):
    """The tiny model has no frozen part: every tensor of F and of G is saved, exactly."""
    model, folder, _ = saved
    for part, module in (("denoiser", model.denoiser.net), ("reconstructor", model.reconstructor)):
        tensors = _tensors(folder, part)
        assert set(tensors) == set(module.state_dict())
        assert {k for k, p in module.named_parameters() if p.requires_grad} <= set(tensors)
        assert all(torch.equal(tensors[k], v) for k, v in module.state_dict().items())


def test_component_configs_round_trip(saved, tmp_path):
    model, folder, _ = saved
    net, recon = model.denoiser.net, model.reconstructor
    for module in (net, recon):
        json.dumps(dict(module.config))  # JSON-serialisable

    def arguments(config):  # what __init__ takes (no _class_name, _name_or_path, ...), sequences as tuples
        return {k: v for k, v in config.items() if not k.startswith("_")}

    def public(config):
        return json.loads(json.dumps(arguments(config)))

    assert dict(MultiViewDenoiser.from_config(net.config).config) == dict(net.config)
    assert arguments(MultiViewDenoiser(**public(net.config)).config) == arguments(net.config)  # lists -> tuples
    assert dict(Reconstructor.from_config(recon.config).config) == dict(recon.config)

    loaded_net = MultiViewDenoiser.from_pretrained(folder, subfolder="denoiser")
    loaded_recon = Reconstructor.from_pretrained(folder / "reconstructor")
    assert arguments(loaded_net.config) == arguments(net.config)
    assert public(loaded_recon.config) == public(recon.config)
    assert loaded_recon.config["down_attention"] == recon.config["down_attention"]  # resolved defaults, as tuples
    # saving a loaded component again writes the same files
    loaded_recon.save_pretrained(tmp_path / "again")
    written = json.loads((tmp_path / "again" / "config.json").read_text())
    assert public(written) == public(recon.config) and "_name_or_path" not in written
    again = load_file(str(tmp_path / "again" / WEIGHTS_NAME))
    assert all(torch.equal(again[k], v) for k, v in _tensors(folder, "reconstructor").items())


# --- frozen parts: SVD's CLIP and VAE, tiny and local ------------------------------------------


@pytest.fixture(scope="module")
def svd_parts(tmp_path_factory) -> dict[str, Path]:
    """A tiny CLIP image encoder and a tiny temporal VAE (downscale 8), saved as diffusers/transformers folders."""
    from diffusers import AutoencoderKLTemporalDecoder
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    root = tmp_path_factory.mktemp("svd")
    torch.manual_seed(5)
    clip_config = CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        image_size=32, patch_size=16, projection_dim=16,
    )  # fmt: skip
    CLIPVisionModelWithProjection(clip_config).save_pretrained(root / "image_encoder")
    AutoencoderKLTemporalDecoder(
        down_block_types=("DownEncoderBlock2D",) * 4, block_out_channels=(32,) * 4, latent_channels=4
    ).save_pretrained(root / "vae")
    return {"image_encoder": root / "image_encoder", "vae": root / "vae"}


def _svd_params(parts: dict[str, Path]):
    return tiny_params(
        model={
            "latent": "vae",
            "vae_path": str(parts["vae"]),
            "denoiser": {"image_encoder": "clip", "image_encoder_path": str(parts["image_encoder"])},
        }
    )


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_frozen_clip_is_referenced_by_path_not_saved(svd_parts, tmp_path):
    params = _svd_params(svd_parts)
    torch.manual_seed(0)
    model = build_model(params)
    net = model.denoiser.net
    frozen = {k for k, p in net.named_parameters() if not p.requires_grad}
    assert frozen and all(k.startswith("image_encoder.clip.") for k in frozen)
    folder = Ouroboros3DPipeline.from_model(model, params).save_pretrained(tmp_path / "model")

    saved = set(_tensors(folder, "denoiser"))
    assert saved == {k for k, p in net.named_parameters() if p.requires_grad}  # this net has no buffers to save
    assert not saved & frozen and not any(k.startswith("image_encoder.clip.") for k in saved)
    config = json.loads((folder / "denoiser" / "config.json").read_text())
    assert config["image_encoder"] == "clip" and config["image_encoder_path"] == str(svd_parts["image_encoder"])
    assert not list(folder.rglob("*.bin")) and not (folder / "denoiser" / "image_encoder").exists()

    loaded = Ouroboros3DPipeline.from_pretrained(folder)
    assert _same_state(loaded.model.denoiser.net, net) and _same_state(loaded.model.reconstructor, model.reconstructor)
    assert not any(p.requires_grad for p in loaded.denoiser.image_encoder.clip.parameters())

    image = _image()
    a = generate(image, Ouroboros3DPipeline.from_model(model.eval(), params), steps=1, seed=0)
    b = generate(image, loaded, steps=1, seed=0)
    assert torch.equal(a.views, b.views) and torch.equal(a.gaussians.means, b.gaussians.means)

    # a saved model initialises another one (the pretraining stages' outputs): CLIP comes from its path
    torch.manual_seed(1)
    fresh = build_model(params)
    initialise(fresh, params, folder, folder)
    assert _same_state(fresh.denoiser.net, net) and _same_state(fresh.reconstructor, model.reconstructor)


def test_svds_frozen_vae_is_referenced_not_saved(svd_parts, tmp_path):
    """SVD's VAE is frozen as built (SVD fine-tuning's), referenced by model.vae_path and loaded from there."""
    params = _svd_params(svd_parts)
    torch.manual_seed(0)
    model = build_model(params)
    frozen = Ouroboros3DPipeline.from_model(model, params).save_pretrained(tmp_path / "frozen")
    assert json.loads((frozen / "model_index.json").read_text())["vae"] == [None, None]
    assert not (frozen / "vae").exists()
    loaded = Ouroboros3DPipeline.from_pretrained(frozen)
    assert _same_state(loaded.vae, model.autoencoder.vae) and not any(p.requires_grad for p in loaded.vae.parameters())
    assert (
        "frozen" in (frozen / "README.md").read_text() and str(svd_parts["vae"]) in (frozen / "README.md").read_text()
    )

    # a frozen part whose folder is gone: one line naming it
    moved = tmp_path / "elsewhere"
    shutil.move(svd_parts["image_encoder"], moved)
    try:
        with pytest.raises(GenerationError) as e:
            Ouroboros3DPipeline.from_pretrained(frozen)
        assert "\n" not in str(e.value) and str(svd_parts["image_encoder"]) in str(e.value)
    finally:
        shutil.move(moved, svd_parts["image_encoder"])


def test_saving_a_frozen_part_that_was_unfrozen_is_refused(svd_parts, tmp_path):
    params = _svd_params(svd_parts)
    model = build_model(params)
    model.denoiser.net.image_encoder.clip.requires_grad_(True)
    with pytest.raises(ValueError, match="saving it by reference would lose its training"):
        Ouroboros3DPipeline.from_model(model, params).save_pretrained(tmp_path / "model")


# --- the model card --------------------------------------------------------------------------


def test_model_card_reports_the_run(tmp_path):
    params = tiny_params()
    metrics = {"train": {"loss": 0.25}, "val": {"mv_psnr": 17.5}, "run": {"steps": 6, "finished": True}}
    run = {"run": "main", "objective": "joint", "steps": 6, "finished": True, "seconds": 12.0, "objects": 3}
    run |= {"settings": dataclasses.asdict(params.train), "init": {"denoiser": "models/pretrain/denoiser"}}
    run |= {"metrics": metrics, "metrics_file": "results/train/main/metrics.json"}
    folder = Ouroboros3DPipeline.from_model(build_model(params), params).save_pretrained(tmp_path / "m", training=run)
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlicense: mit\n")
    for fact in ("`main`", "random_urdfs", "trained on 3 objects", "| steps | 6 of 6 |", "models/pretrain/denoiser"):
        assert fact in card, fact
    assert "| val/mv_psnr | 17.5 |" in card and "results/train/main/metrics.json" in card
    assert "## Licence" in card
    untrained = Ouroboros3DPipeline.from_model(build_model(params), params).save_pretrained(tmp_path / "u")
    assert "Not recorded" in (untrained / "README.md").read_text()


# --- initialising from a saved model (the pretraining stages' outputs) ---------------------


def test_fine_tuning_starts_exactly_from_a_saved_model(tmp_path):
    params = tiny_params()  # feedback: F gains feedback networks the pretrained F lacks
    pre_params = dataclasses.replace(params, feedback=False)
    torch.manual_seed(1)
    pretrained = build_model(pre_params)
    with torch.no_grad():  # as if trained: F's zero-initialised output conv no longer zero
        for p in pretrained.denoiser.net.unet.conv_out.parameters():
            p.normal_(0.0, 0.05)
    folder = Ouroboros3DPipeline.from_model(pretrained, pre_params).save_pretrained(tmp_path / "pretrain")
    torch.manual_seed(0)
    model = build_model(params)
    initialise(model, params, folder, folder)
    ours, theirs = model.state_dict(), pretrained.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in theirs.items())
    assert all(k.startswith("denoiser.net.feedback_networks.") for k in set(ours) - set(theirs))


# --- one-line errors -------------------------------------------------------------------------


def _swap_reconstructor_weights(folder: Path) -> None:
    """G's weights of another architecture under the config that matches params.json."""
    other = tiny_params(model={"reconstructor": {"down_channels": [8, 8, 16], "up_channels": [16, 16]}})
    save_file(build_reconstructor(other).state_dict(), str(folder / "reconstructor" / WEIGHTS_NAME))


def _drop_a_tensor(folder: Path) -> None:
    path = folder / "denoiser" / WEIGHTS_NAME
    tensors = load_file(str(path))
    tensors.pop(sorted(tensors)[0])
    save_file(tensors, str(path))


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


BREAKAGES = {
    "no denoiser weights": (lambda f: (f / "denoiser" / WEIGHTS_NAME).unlink(), "is incomplete"),
    "no reconstructor config": (lambda f: (f / "reconstructor" / "config.json").unlink(), "is incomplete"),
    "no reconstructor folder": (lambda f: shutil.rmtree(f / "reconstructor"), "is incomplete"),
    "garbage weights": (
        lambda f: (f / "denoiser" / WEIGHTS_NAME).write_bytes(b"not safetensors"),
        "cannot read weights",
    ),
    "bad config JSON": (lambda f: (f / "denoiser" / "config.json").write_text("{oops"), "is not valid JSON"),
    "config of another model": (
        lambda f: _edit_json(f / "reconstructor" / "config.json", down_channels=[8, 8, 16]),
        "does not match this model's params.json: down_channels",
    ),
    "weights of another shape": (_swap_reconstructor_weights, "does not match this model"),
    "a tensor missing": (_drop_a_tensor, "does not match this model: missing"),
    "no index": (lambda f: (f / "model_index.json").unlink(), "checkpoint not found"),
    "bad index JSON": (lambda f: (f / "model_index.json").write_text("[1,"), "is not valid JSON"),
    "another pipeline": (
        lambda f: _edit_json(f / "model_index.json", _class_name="StableDiffusionPipeline"),
        "is not an Ouroboros3DPipeline index",
    ),
    "no params": (lambda f: (f / "params.json").unlink(), "has no params.json"),
    "bad params": (lambda f: (f / "params.json").write_text(json.dumps({"data": "big"})), "params.json"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_a_broken_folder_is_one_line_generation_error(breakage, saved, tmp_path):
    _, folder, _ = saved
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    damage, expect = BREAKAGES[breakage]
    damage(broken)
    with pytest.raises(GenerationError) as e:
        Ouroboros3DPipeline.from_pretrained(broken)
    message = str(e.value)
    assert "\n" not in message and expect in message, message


def test_missing_folder_old_layout_and_bad_device_are_one_line_errors(saved, tmp_path):
    _, folder, _ = saved
    old = tmp_path / "old"
    old.mkdir()
    (old / "model.safetensors").write_bytes(b"weights")
    shutil.copy(folder / "params.json", old)
    cases = [(tmp_path / "nowhere", "cpu", "checkpoint not found"), (old, "cpu", "old single-file layout")]
    cases.append((folder, "tpu", "unknown device"))
    for path, device, expect in cases:
        with pytest.raises(GenerationError) as e:
            Ouroboros3DPipeline.from_pretrained(path, device=device)
        assert "\n" not in str(e.value) and expect in str(e.value), str(e.value)


def test_a_component_config_with_unknown_keys_is_refused(saved, tmp_path):
    """diffusers' from_config would drop an unknown key with a warning and build the network
    without it: from_pretrained refuses the folder instead."""
    _, folder, _ = saved
    for part, cls in (("denoiser", MultiViewDenoiser), ("reconstructor", Reconstructor)):
        shutil.copytree(folder / part, tmp_path / part)
        config = json.loads((tmp_path / part / "config.json").read_text())
        (tmp_path / part / "config.json").write_text(json.dumps(config | {"zoom": 2}))
        with pytest.raises(ValueError, match=r"unknown config keys \['zoom'\]"):
            cls.from_pretrained(tmp_path / part)
