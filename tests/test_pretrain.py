"""Pretrain once, fine-tune every variant: the objectives, the one initialisation path, the
learning-curve hook, and the training levers (recolouring, the lr schedule, guidance interval)."""

import csv
import dataclasses
import itertools

import pytest
import torch
from conftest import SyntheticDataset, synthetic_batch, tiny_params

from ouroboros3d.build import InitError, build_model, initialise, training_fingerprint
from ouroboros3d.config import ParamsError, load_params
from ouroboros3d.inference.pipeline import Ouroboros3DPipeline
from ouroboros3d.model import recolour
from ouroboros3d.sampling import sample, sample_kwargs
from ouroboros3d.training.loop import _lr_factor, train
from ouroboros3d.training.tracking import read_curves, read_metrics
from ouroboros3d.training.validation import reconstruction_scores, validation_scores


def _save(model, params, folder):
    Ouroboros3DPipeline.from_model(model, params).save_pretrained(folder)


def _pretrained(params, tmp_path, seed=1):
    """F and G folders holding weights unlike a fresh model's (another seed's init)."""
    torch.manual_seed(seed)
    denoiser_params = dataclasses.replace(params, feedback=False)
    model = build_model(denoiser_params)
    with torch.no_grad():  # as if trained: F's zero-initialised output conv no longer zero
        for p in model.denoiser.net.unet.conv_out.parameters():
            p.normal_(0.0, 0.05)
    _save(model, denoiser_params, tmp_path / "denoiser")
    _save(model, dataclasses.replace(params, feedback=False, joint=False), tmp_path / "reconstructor")
    return model


def test_fine_tuning_starts_exactly_from_the_pretrained_weights(tmp_path):
    params = tiny_params()  # feedback on: F gains feedback networks the pretrained F lacks
    pretrained = _pretrained(params, tmp_path)
    torch.manual_seed(0)
    model = build_model(params)
    initialise(model, params, tmp_path / "denoiser", tmp_path / "reconstructor")
    ours, theirs = model.state_dict(), pretrained.state_dict()
    for key, value in theirs.items():
        torch.testing.assert_close(ours[key], value, rtol=0, atol=0, msg=key)
    new = [k for k in ours if k not in theirs]
    assert new and all(k.startswith("denoiser.net.feedback_networks.") for k in new)
    # the new feedback networks start neutral: with any maps, F's output equals the pretrained F's
    batch = synthetic_batch(params)
    cond = model.condition(batch["input_view"], batch["K"], batch["c2w"])
    x = torch.randn(2, params.camera.num_views, 3, 16, 16)
    maps = {m: torch.rand_like(batch["views"]) for m in model.feedback_maps}
    with torch.no_grad():
        a = model.denoiser(x, torch.tensor([1.0, 5.0]), **cond, feedback=maps)
        b = pretrained.denoiser(x, torch.tensor([1.0, 5.0]), **cond, feedback=None)
    torch.testing.assert_close(a, b)


def test_a_pretrained_model_of_other_params_is_refused_with_the_key_named(tmp_path):
    params = tiny_params()
    _pretrained(params, tmp_path)
    other = tiny_params(model={"reconstructor": {"down_channels": [8, 16, 32]}})
    with pytest.raises(InitError, match=r"model\.reconstructor\.down_channels"):
        initialise(build_model(other), other, None, tmp_path / "reconstructor")
    with pytest.raises(InitError, match=r"model\.safetensors and params\.json"):
        initialise(build_model(params), params, tmp_path / "nothing-here", None)


def test_the_fingerprint_follows_the_weights_training_starts_from(tmp_path):
    params = tiny_params()
    _pretrained(params, tmp_path)
    start = (tmp_path / "denoiser", tmp_path / "reconstructor")
    before = training_fingerprint(params, start)
    assert before != training_fingerprint(params)
    _pretrained(params, tmp_path, seed=2)  # a re-run pretraining: a fine-tune must not resume
    assert training_fingerprint(params, start) != before


@pytest.mark.parametrize("objective", ["denoiser", "reconstructor"])
def test_pretraining_objectives_train_only_their_part(tmp_path, objective):
    params = tiny_params(feedback=False, joint=objective == "denoiser")
    torch.manual_seed(0)
    model = build_model(params)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = dataclasses.replace(params.train, steps=2, recolour=True)
    train(
        model, SyntheticDataset(params), settings, tmp_path / "c", tmp_path / "log", seed=0, fingerprint="f",
        progress=False, objective=objective,
    )  # fmt: skip
    changed = {k.split(".")[0] for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {objective}


def test_validation_curve_is_logged_for_the_ema_and_resumes_without_repeats(tmp_path):
    params = tiny_params(feedback=False)
    batch = synthetic_batch(params)

    kwargs = sample_kwargs(params.sample, steps=2)

    def run(stop_after=None):
        torch.manual_seed(0)
        model = build_model(params)
        settings = dataclasses.replace(params.train, steps=4, checkpoint_every=2)
        train(
            model, SyntheticDataset(params), settings, tmp_path / "c", tmp_path / "log", seed=0,
            fingerprint="f", progress=False, objective="denoiser", stop_after=stop_after,
            validate=lambda m: validation_scores(m, batch, [0, 1], kwargs), validate_every=1,
        )  # fmt: skip

    run(stop_after=3)  # killed after step 3: the checkpoint is at step 2
    run()
    val_dir = tmp_path / "log" / "plots" / "metrics" / "val"
    names = {p.stem for p in val_dir.glob("*.tsv")}
    assert {"x0_psnr", "mv_psnr", "copy_input_psnr", "white_psnr"} <= names
    for name in names:  # each validation step once in every file, after the kill and the resume
        rows = list(csv.DictReader((val_dir / f"{name}.tsv").open(), delimiter="\t"))
        assert [int(r["step"]) for r in rows] == [1, 2, 3, 4], name
    curve = read_curves(tmp_path / "log", "val")
    assert curve["step"].tolist() == [1, 2, 3, 4] and names <= set(curve)
    metrics = read_metrics(tmp_path / "log")
    assert metrics["val"]["white_psnr"] == curve["white_psnr"].iloc[-1] and metrics["run"]["steps"] == 4


def test_reconstruction_scores_are_g_on_the_ground_truth_views():
    params = tiny_params(feedback=False, joint=False)
    batch = synthetic_batch(params, batch_size=2)
    torch.manual_seed(0)
    model = build_model(params).train()
    scores = reconstruction_scores(model, batch)
    assert model.training  # left as it was
    with torch.no_grad():
        rgb = model.eval().reconstruct(batch["views"], batch["K"], batch["c2w"], None).rgb
    mse = ((rgb[:, 1:].clamp(0, 1) - batch["views"][:, 1:]) ** 2).flatten(2).mean(2)
    assert scores["recon_psnr"] == pytest.approx((-10 * torch.log10(mse)).mean().item(), abs=1e-4)
    sampled = validation_scores(model, batch, [0, 1], sample_kwargs(params.sample, steps=1))
    assert scores["copy_input_psnr"] == pytest.approx(sampled["copy_input_psnr"])


def test_recolour_permutes_channels_the_same_way_in_every_view():
    batch = synthetic_batch(tiny_params(), batch_size=6)
    out = recolour(batch, torch.Generator().manual_seed(0))
    used = []
    for b in range(6):
        perms = [p for p in itertools.permutations(range(3)) if torch.equal(out["views"][b], batch["views"][b][:, p])]
        assert perms, f"object {b}: not one channel permutation for all its views"
        used.append(perms[0])
    assert len(set(used)) > 1  # objects get different colours
    torch.testing.assert_close(out["input_view"], out["views"][:, 0])
    torch.testing.assert_close(out["alpha"], batch["alpha"])


def test_lr_is_constant_then_decays_over_the_last_fraction():
    s = dataclasses.replace(tiny_params().train, steps=100, warmup_steps=10, lr_decay_fraction=0.2)
    factors = [_lr_factor(i, s) for i in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == 1.0
    assert all(f == 1.0 for f in factors[10:80])
    assert all(a >= b for a, b in itertools.pairwise(factors[80:])) and factors[-1] < 0.15


def test_guidance_only_inside_its_sigma_interval():
    params = tiny_params(feedback=False)
    torch.manual_seed(0)
    model = build_model(params).eval()
    batch = synthetic_batch(params)
    args = (model, batch["input_view"], batch["K"], batch["c2w"])
    common = dict(steps=3, sigma_max=80.0, reconstruct="none", seeds=[0, 1])
    for p in model.denoiser.net.parameters():  # a non-trivial network: cond and uncond differ
        torch.nn.init.normal_(p, std=0.05)
    plain = sample(*args, guidance=(1.0, 1.0), **common).views
    outside = sample(*args, guidance=(1.0, 3.0), guidance_sigmas=(1000.0, 2000.0), **common).views
    inside = sample(*args, guidance=(1.0, 3.0), guidance_sigmas=(0.0, 100.0), **common).views
    torch.testing.assert_close(outside, plain, rtol=0, atol=0)
    assert not torch.allclose(inside, plain)


def test_params_read_as_yaml_1_2_as_dvc_writes_them(tmp_path):
    """`dvc exp run -S` rewrites params.yaml without quotes: a bare `no` must stay the string."""
    from conftest import ROOT

    text = (ROOT / "params.yaml").read_text().replace('mixed_precision: "no"', "mixed_precision: no")
    assert "mixed_precision: no\n" in text
    (tmp_path / "params.yaml").write_text(text)
    assert load_params(tmp_path / "params.yaml").train.mixed_precision == "no"
    (tmp_path / "bad.yaml").write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(tmp_path / "bad.yaml")


def test_ema_warms_up_and_skips_frozen_parameters():
    from ouroboros3d.training.state import EMA

    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    net[1].requires_grad_(False)
    ema = EMA(net, decay=0.999)
    assert set(ema.shadow) == {"0.weight", "0.bias"}
    before = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.add_(1.0)
    ema.update(net)  # first update: decay (1 + 0) / (10 + 0) = 0.1, not 0.999
    torch.testing.assert_close(ema.shadow["0.weight"], 0.1 * before + 0.9 * net[0].weight)
    assert ema.current_decay() == pytest.approx(2 / 11)
    for _ in range(10_000):
        ema.updates += 1
    assert ema.current_decay() == 0.999


def test_a_pretraining_run_names_its_component_and_settings():
    params = tiny_params()
    assert params.pretraining("denoiser") == ("denoiser", params.pretrain.denoiser)
    assert params.pretraining("reconstructor") == ("reconstructor", params.pretrain.reconstructor)
    # the second publication of F trains F, with its own settings
    part, settings = params.pretraining("denoiser_continued")
    assert part == "denoiser" and settings == params.pretrain.denoiser_continued
    unset = dataclasses.replace(params, pretrain=dataclasses.replace(params.pretrain, denoiser_continued=None))
    with pytest.raises(ParamsError, match=r"pretrain\.denoiser_continued: is not set"):
        unset.pretraining("denoiser_continued")
    with pytest.raises(ParamsError, match="no pretraining 'feedback'"):
        params.pretraining("feedback")
