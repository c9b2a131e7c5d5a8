"""The multi-view denoiser: SVD's UNet, its exact forward, cameras, and feedback (eq. 10-12)."""

import copy
from collections.abc import Mapping

import pytest
import torch

import ouroboros3d  # noqa: F401  (makes diffusers importable on CPU-only torch)
from ouroboros3d.diffusion.edm import EDMPrecond
from ouroboros3d.models.conditioning import ImageEncoder, harmonic_embedding
from ouroboros3d.models.denoiser import MultiViewDenoiser, parameter_summary

SVD_UNET_PARAMETERS = 1_524_623_082  # diffusers' default UNetSpatioTemporalConditionModel = SVD's UNet
SVD_ARCHITECTURE_KEYS = (
    "in_channels",
    "out_channels",
    "down_block_types",
    "up_block_types",
    "block_out_channels",
    "addition_time_embed_dim",
    "projection_class_embeddings_input_dim",
    "layers_per_block",
    "cross_attention_dim",
    "transformer_layers_per_block",
    "num_attention_heads",
)

# A tiny model with SVD's block layout (attention at levels 1-3, none at the lowest) and a
# non-trivial unshuffle: 32² feedback maps -> 16² latent levels 16/8/4/2.
TINY = dict(
    latent_channels=3,
    sample_size=16,
    block_out_channels=(32, 32, 32, 32),
    layers_per_block=1,
    num_attention_heads=(1, 1, 1, 1),
    cross_attention_dim=16,
    addition_time_embed_dim=4,
    image_encoder="cnn",
    image_encoder_channels=(8, 16),
    feedback_unshuffle=2,
    feedback_blocks_per_scale=1,
    camera_frequencies=2,
    camera_embed_dim=8,
)
B, V = 2, 3


def make_inputs(config: Mapping, seed: int = 0, batch: int = B, views: int = V) -> dict:
    """Inputs for a denoiser of this architecture (its keyword arguments, or its ``config``)."""
    g = torch.Generator().manual_seed(seed)
    c, s = config["latent_channels"], config["sample_size"]
    img = s * config["feedback_unshuffle"]  # the feedback maps come at image resolution
    return {
        "x": torch.randn(batch, views, c, s, s, generator=g),
        "c_noise": torch.randn(batch, generator=g),
        "cond_latent": torch.randn(batch, c, s, s, generator=g),
        "cond_embedding": torch.randn(batch, 1, config["cross_attention_dim"], generator=g),
        "plucker": torch.randn(batch, views, 6, s, s, generator=g),
        "feedback": {m: torch.rand(batch, views, 3, img, img, generator=g) for m in ("ccm", "rgb")},
    }


def run(model: MultiViewDenoiser, inputs: dict, feedback="from_inputs") -> torch.Tensor:
    args = dict(inputs)
    x, c_noise = args.pop("x"), args.pop("c_noise")
    if feedback != "from_inputs":
        args["feedback"] = feedback
    return model(x, c_noise, **args)


def diffusers_forward(model: MultiViewDenoiser, inputs: dict) -> torch.Tensor:
    x, cond = inputs["x"], inputs["cond_latent"]
    sample = torch.cat([x, cond[:, None].expand(-1, x.shape[1], -1, -1, -1)], dim=2)
    added = model.added_time_ids.expand(x.shape[0], -1)
    return model.unet(sample, inputs["c_noise"], inputs["cond_embedding"], added).sample


def perturb_(module: torch.nn.Module, std: float = 0.1, seed: int = 1) -> None:
    """Give every all-zero parameter (the zero-initialised convs) random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * std)


@pytest.fixture(scope="module")
def tiny() -> MultiViewDenoiser:
    """The tiny denoiser as if trained a little: its zero-initialised output conv perturbed
    (the feedback and camera zero convs stay zero: tests check that they start neutral)."""
    torch.manual_seed(0)
    model = MultiViewDenoiser(**TINY).eval()
    perturb_(model.unet.conv_out)
    return model


def test_an_untrained_denoiser_outputs_zero():
    """EDM's and ADM's zero-initialised output layer: D(x; sigma) = c_skip x before training."""
    torch.manual_seed(0)
    model = MultiViewDenoiser(**TINY).eval()
    with torch.no_grad():
        assert not run(model, make_inputs(TINY)).any()


# --- the paper configuration, on the meta device (no memory) ---------------------------------


def test_paper_preset_unet_is_svd_exactly():
    from diffusers import UNetSpatioTemporalConditionModel  # after ouroboros3d (see its _compat)

    with torch.device("meta"):
        reference = UNetSpatioTemporalConditionModel()
        model = MultiViewDenoiser(image_encoder="none")
    count = sum(p.numel() for p in reference.parameters())
    assert count == SVD_UNET_PARAMETERS
    summary = parameter_summary(model)
    assert summary["unet"] == SVD_UNET_PARAMETERS
    assert summary["feedback_ccm"] == summary["feedback_rgb"] == 209_987_840
    for key in SVD_ARCHITECTURE_KEYS:
        assert model.unet.config[key] == reference.config[key], key
    assert {k: tuple(v.shape) for k, v in model.unet.state_dict().items()} == {
        k: tuple(v.shape) for k, v in reference.state_dict().items()
    }


def test_paper_forward_on_meta_matches_table_1():
    with torch.device("meta"):
        model = MultiViewDenoiser(image_encoder="none")
    config = model.config
    # diffusers' AlphaBlender makes its mix factor with torch.Tensor([...]), which ignores the
    # device context: move everything to meta explicitly.
    model = model.to("meta")
    seen = []
    hooks = [
        net.register_forward_hook(lambda m, i, out: seen.append([tuple(f.shape[1:]) for f in out]))
        for net in model.feedback_networks.values()
    ]
    with torch.device("meta"):
        inputs = make_inputs(config, batch=1, views=8)
        inputs = {
            k: (v.to("meta") if torch.is_tensor(v) else {m: t.to("meta") for m, t in v.items()})
            for k, v in inputs.items()
        }
        assert inputs["feedback"]["ccm"].shape == (1, 8, 3, 512, 512)
        out = run(model, inputs)
    for h in hooks:
        h.remove()
    assert out.shape == (1, 8, 4, 64, 64)
    assert seen == [[(320, 64, 64), (640, 32, 32), (1280, 16, 16), (1280, 8, 8)]] * 2


def _preset_config(name: str, **model):
    from conftest import ROOT

    from ouroboros3d.build import denoiser_kwargs
    from ouroboros3d.config import _deep_merge, params_from_dict, read_yaml

    raw = read_yaml((ROOT / "params.yaml").read_text()) | {"preset": name}
    if name in raw["presets"]:  # the changes go over the preset, as a preset goes over the sections
        raw["presets"][name] = _deep_merge(raw["presets"][name] or {}, {"model": model})
    else:
        raw = _deep_merge(raw, {"model": model})
    return denoiser_kwargs(params_from_dict(raw))


def test_presets_build_from_params_with_expected_sizes():
    with torch.device("meta"):
        medium = parameter_summary(MultiViewDenoiser(**_preset_config("gpu-medium")))
        small = parameter_summary(MultiViewDenoiser(**_preset_config("cpu-small")))
        paper = parameter_summary(MultiViewDenoiser(**_preset_config("paper", denoiser={"image_encoder": "none"})))
    assert 50e6 <= medium["total"] <= 150e6
    assert 2e6 <= small["total"] <= 20e6
    assert paper["unet"] == SVD_UNET_PARAMETERS  # the paper preset of params.yaml is SVD's UNet exactly
    small_config = _preset_config("cpu-small")
    assert small_config["sample_size"] * small_config["feedback_unshuffle"] == 32
    assert small_config["down_block_types"][0] == "DownBlockSpatioTemporal"


def test_config_validation():
    from ouroboros3d.config import ParamsError

    with pytest.raises(ParamsError, match=r"model\.denoiser\.num_attention_heads"):
        _preset_config("cpu-small", denoiser={"num_attention_heads": [1, 2]})
    with pytest.raises(ValueError, match="feedback_maps"):
        MultiViewDenoiser(**TINY | {"feedback_maps": ("depth",)})
    with pytest.raises(ValueError, match="image_encoder"):
        MultiViewDenoiser(**TINY | {"image_encoder": "dino"})
    with pytest.raises(ValueError, match=r"num_attention_heads: needs one entry per level \(4\)"):
        MultiViewDenoiser(**TINY | {"num_attention_heads": (1, 2)})


# --- exactness against diffusers --------------------------------------------------------------


@pytest.mark.parametrize("sample_size", [16, 12])  # 12: odd lowest level, diffusers' forced upsample size
def test_forward_equals_diffusers_forward_without_feedback(tiny, sample_size):
    config = TINY | {"sample_size": sample_size}
    inputs = make_inputs(config)
    with torch.no_grad():
        ours = run(tiny, inputs, feedback=None)
        theirs = diffusers_forward(tiny, inputs)
    assert ours.shape == (B, V, config["latent_channels"], sample_size, sample_size)
    assert torch.equal(ours, theirs)


def test_untrained_feedback_leaves_output_exactly_unchanged(tiny):
    inputs = make_inputs(TINY)
    with torch.no_grad():
        without = run(tiny, inputs, feedback=None)
        with_feedback = run(tiny, inputs)
        with_one_map = run(tiny, inputs, feedback={"rgb": inputs["feedback"]["rgb"]})
    assert torch.equal(without, with_feedback)
    assert torch.equal(without, with_one_map)


def test_trained_feedback_changes_output(tiny):
    model = copy.deepcopy(tiny)
    perturb_(model.feedback_networks)
    inputs = make_inputs(TINY)
    with torch.no_grad():
        without = run(model, inputs, feedback=None)
        with_feedback = run(model, inputs)
        other_maps = run(model, make_inputs(TINY, seed=5) | {k: v for k, v in inputs.items() if k != "feedback"})
    assert not torch.allclose(without, with_feedback)
    assert not torch.allclose(with_feedback, other_maps)


@pytest.mark.parametrize("scale", [0, 1, 2, 3])
def test_feedback_is_added_to_encoder_feature_before_downsampler(tiny, scale):
    """Eq. 12 at scale i only: the feature entering down block i's downsampler (the mid block
    for the last scale) moves by exactly F_p^i + F_t^i; earlier scales do not move at all."""
    model = copy.deepcopy(tiny)
    for net in model.feedback_networks.values():
        perturb_(net.zero_convs[scale], seed=scale + 1)
    captured: dict[int, torch.Tensor] = {}
    blocks = model.unet.down_blocks

    def capture(i):
        def hook(module, args, kwargs):
            captured[i] = (args[0] if args else kwargs["hidden_states"]).clone()

        return hook

    hooks = [blocks[i].downsamplers[0].register_forward_pre_hook(capture(i), with_kwargs=True) for i in range(3)]
    hooks.append(model.unet.mid_block.register_forward_pre_hook(capture(3), with_kwargs=True))
    inputs = make_inputs(TINY)
    with torch.no_grad():
        run(model, inputs, feedback=None)
        base = dict(captured)
        run(model, inputs)
        fed = dict(captured)
        expected = model.feedback_features(inputs["feedback"])
    for h in hooks:
        h.remove()
    for i in range(4):
        assert not (i != scale and expected[i].any())
        if i < scale:
            assert torch.equal(fed[i], base[i])
    assert expected[scale].abs().mean() > 0
    torch.testing.assert_close(fed[scale] - base[scale], expected[scale], atol=1e-5, rtol=1e-4)


def test_feedback_shape_mismatch_is_reported(tiny):
    inputs = make_inputs(TINY)
    wrong = {"ccm": torch.rand(B, V, 3, 16, 16)}  # latent size, not image size
    with pytest.raises(ValueError, match="feedback_unshuffle"):
        run(tiny, inputs, feedback=wrong)


def test_model_without_feedback_has_no_feedback_parameters():
    model = MultiViewDenoiser(**TINY | {"feedback_maps": ()})
    assert len(model.feedback_networks) == 0
    assert not any("feedback" in name for name, _ in model.named_parameters())
    inputs = make_inputs(TINY)
    with pytest.raises(ValueError, match="no feedback network"):
        run(model, inputs)
    with torch.no_grad():
        assert torch.equal(run(model, inputs, feedback=None), run(model, inputs, feedback={}))
    one = MultiViewDenoiser(**TINY | {"feedback_maps": ("ccm",)})
    assert list(one.feedback_networks) == ["ccm"]


# --- cameras, image conditioning, gradients ---------------------------------------------------


def test_harmonic_embedding():
    x = torch.tensor([0.25, -0.5]).view(1, 2, 1, 1)
    e = harmonic_embedding(x, 2)
    assert e.shape == (1, 10, 1, 1)
    torch.testing.assert_close(e[0, :, 0, 0, None].flatten()[:2], x.flatten())
    torch.testing.assert_close(e[0, 2:6, 0, 0], torch.sin(torch.pi * torch.tensor([0.25, 0.5, -0.5, -1.0])))


def test_cameras_start_neutral_and_matter_once_trained(tiny):
    inputs = make_inputs(TINY)
    other = dict(inputs, plucker=torch.randn_like(inputs["plucker"]))
    with torch.no_grad():
        assert torch.equal(run(tiny, inputs), run(tiny, other))
        model = copy.deepcopy(tiny)
        perturb_(model.camera.projections)
        assert not torch.allclose(run(model, inputs), run(model, other))
    # the camera sites: before every down block, the mid block and every up block
    assert sorted(tiny.camera.projections) == sorted(
        [*(f"down{i}" for i in range(4)), "mid", *(f"up{i}" for i in range(4))]
    )


def test_gradients_reach_denoiser_feedback_camera_and_image_encoder(tiny):
    model = copy.deepcopy(tiny).train()
    inputs = make_inputs(TINY)
    image = torch.rand(B, 3, 32, 32)

    # At initialisation: the UNet, the zero convs and the camera projections get gradient.
    inputs["cond_embedding"] = model.encode_image(image)
    run(model, inputs).square().mean().backward()
    for net in model.feedback_networks.values():
        assert all(c.weight.grad.abs().sum() > 0 for c in net.zero_convs)
    assert all(p.grad.abs().sum() > 0 for p in model.camera.projections.parameters())
    assert model.unet.conv_in.weight.grad.abs().sum() > 0
    assert model.image_encoder.head.weight.grad.abs().sum() > 0

    # Once the zero-initialised layers move, every parameter of every part gets gradient.
    model.zero_grad()
    perturb_(model.feedback_networks)
    perturb_(model.camera)
    inputs["cond_embedding"] = model.encode_image(image)
    run(model, inputs).square().mean().backward()
    for part in (model.feedback_networks, model.camera, model.image_encoder):
        for name, p in part.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    for name in (
        "conv_in.weight",
        "conv_out.weight",
        "time_embedding.linear_1.weight",
        "add_embedding.linear_1.weight",
    ):
        assert model.unet.get_parameter(name).grad.abs().sum() > 0, name


def test_edm_preconditioning_wraps_the_denoiser(tiny):
    inputs = make_inputs(TINY)
    x = inputs.pop("x")
    inputs.pop("c_noise")
    with torch.no_grad():
        out = EDMPrecond(tiny)(x, torch.tensor([0.5, 3.0]), **inputs)
        scalar = tiny(x, torch.tensor(0.1), **inputs)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert scalar.shape == x.shape


def test_image_encoder_cnn_shape_and_clip_needs_local_folder(tmp_path):
    encoder = ImageEncoder("cnn", dim=24, channels=(8, 16))
    assert encoder(torch.rand(2, 3, 40, 40)).shape == (2, 1, 24)
    missing = tmp_path / "no-clip-here"
    with pytest.raises(FileNotFoundError, match="no-clip-here"):
        ImageEncoder("clip", dim=1024, clip_path=missing)
    with pytest.raises(FileNotFoundError, match="no local folder"):
        MultiViewDenoiser(**TINY | {"image_encoder": "clip"})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        MultiViewDenoiser(**TINY).load_pretrained_unet(missing)


def test_gradient_checkpointing_gives_the_same_gradients(tiny):
    plain = copy.deepcopy(tiny).train()
    perturb_(plain.feedback_networks)
    perturb_(plain.camera)
    checkpointed = MultiViewDenoiser(**TINY | {"gradient_checkpointing": True}).train()
    checkpointed.load_state_dict(plain.state_dict())
    assert checkpointed.unet.down_blocks[0].gradient_checkpointing
    inputs = make_inputs(TINY)
    for model in (plain, checkpointed):
        run(model, inputs).square().mean().backward()
    for (name, a), b in zip(plain.unet.named_parameters(), checkpointed.unet.parameters(), strict=True):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_cpu_small_preset_runs_with_feedback():
    torch.manual_seed(0)
    config = _preset_config("cpu-small")
    model = MultiViewDenoiser(**config).eval()
    inputs = make_inputs(config, batch=1, views=2)
    inputs["cond_embedding"] = model.encode_image(torch.rand(1, 3, 32, 32))
    with torch.no_grad():
        out = run(model, inputs)
    assert out.shape == (1, 2, 3, 32, 32) and torch.isfinite(out).all()
