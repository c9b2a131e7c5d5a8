"""Algorithm 1 (joint training losses) and Algorithm 2 (recursive sampling) on a tiny model."""

import pytest
import torch
from conftest import synthetic_batch, tiny_params

from ouroboros3d.build import build_model
from ouroboros3d.diffusion import edm
from ouroboros3d.model import Ouroboros3D
from ouroboros3d.sampling import feedback_window, guidance_scales, initial_noise, sample


def _model(**changes) -> tuple[Ouroboros3D, object]:
    """A tiny model whose F's zero-initialised output conv is perturbed, so gradients reach inside F."""
    torch.manual_seed(0)
    params = tiny_params(**changes)
    model = build_model(params)
    with torch.no_grad():
        for p in model.denoiser.net.unet.conv_out.parameters():
            p.normal_(0.0, 0.05)
    return model, params


def test_training_losses_are_finite_and_every_part_gets_gradients():
    model, params = _model()
    # perturb the feedback networks' zero-initialised output convs so gradients reach inside them
    with torch.no_grad():
        for p in model.denoiser.net.feedback_networks.parameters():
            p.add_(0.01 * torch.randn_like(p))
    losses = model(synthetic_batch(params), torch.Generator().manual_seed(0), feedback_prob=1.0)
    assert losses["second_pass"] == 1.0
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    parts = {
        "unet": model.denoiser.net.unet,
        "camera": model.denoiser.net.camera,
        "image_encoder": model.denoiser.net.image_encoder,
        "feedback.ccm": model.denoiser.net.feedback_networks["ccm"],
        "feedback.rgb": model.denoiser.net.feedback_networks["rgb"],
        "reconstructor": model.reconstructor,
    }
    for name, part in parts.items():
        grads = [p.grad for p in part.parameters() if p.grad is not None]
        assert grads, f"no gradient reached {name}"
        assert sum(g.abs().sum() for g in grads) > 0, f"zero gradient in {name}"


def test_joint_training_sends_the_reconstruction_loss_into_the_denoiser():
    for joint, expect_grad in [(True, True), (False, False)]:
        model, params = _model(joint=joint, feedback=joint)
        losses = model(synthetic_batch(params), torch.Generator().manual_seed(0), feedback_prob=0.0)
        losses["loss_recon"].backward()
        grads = [p.grad for p in model.denoiser.net.unet.parameters() if p.grad is not None]
        reached = bool(grads) and sum(g.abs().sum() for g in grads) > 0
        assert reached == expect_grad, f"joint={joint}"


def test_feedback_false_removes_the_feedback_path():
    model, params = _model(feedback=False)
    assert not model.has_feedback
    assert len(model.denoiser.net.feedback_networks) == 0
    assert not any("feedback" in n for n, _ in model.named_parameters())
    losses = model(synthetic_batch(params), torch.Generator().manual_seed(0), feedback_prob=1.0)
    assert losses["second_pass"] == 0.0
    assert model.zero_feedback(torch.zeros(1)) is None


def test_feedback_map_selection_builds_only_those_networks():
    model, _ = _model(feedback_maps=["ccm"])
    assert model.feedback_maps == ("ccm",)
    assert list(model.denoiser.net.feedback_networks) == ["ccm"]


def test_untrained_feedback_changes_nothing_and_trained_feedback_changes_the_prediction():
    model, params = _model()
    batch = synthetic_batch(params)
    cond = model.condition(batch["input_view"], batch["K"], batch["c2w"])
    x = torch.randn(2, params.camera.num_views, 3, 16, 16)
    sigma = torch.tensor([1.0, 5.0])
    maps = {"ccm": torch.rand_like(batch["views"]), "rgb": torch.rand_like(batch["views"])}
    with torch.no_grad():
        zero = model.denoiser(x, sigma, **cond, feedback=model.zero_feedback(batch["views"]))
        fed = model.denoiser(x, sigma, **cond, feedback=maps)
        torch.testing.assert_close(fed, zero, rtol=0, atol=0)
        for p in model.denoiser.net.feedback_networks.parameters():
            p.add_(0.05 * torch.randn_like(p))
        changed = model.denoiser(x, sigma, **cond, feedback=maps)
    assert (changed - zero).abs().max() > 1e-4


def test_reconstruction_renders_rgb_alpha_and_a_ccm_consistent_with_its_depth():
    model, params = _model()
    batch = synthetic_batch(params)
    recon = model.reconstruct(batch["views"], batch["K"], batch["c2w"], torch.tensor([1.0, 1.0]))
    b, v = 2, params.camera.num_views
    assert recon.rgb.shape == (b, v, 3, 16, 16) and recon.ccm.shape == (b, v, 3, 16, 16)
    assert recon.alpha.shape == (b, v, 1, 16, 16)
    assert recon.ccm.min() >= 0 and recon.ccm.max() <= 1
    g = model.reconstructor.splat_size
    assert recon.gaussians.means.shape == (b, len(params.model.recon_views) * g * g, 3)
    fb = recon.feedback(("ccm", "rgb"))
    assert set(fb) == {"ccm", "rgb"} and not fb["rgb"].requires_grad


def test_feedback_window_matches_table_3_settings():
    assert feedback_window(25, 0.0) == [True] * 25
    assert feedback_window(25, 0.4) == [False] * 10 + [True] * 15
    assert feedback_window(25, 0.8) == [False] * 20 + [True] * 5
    with pytest.raises(ValueError):
        feedback_window(25, 1.5)


def test_guidance_rises_linearly_from_the_input_view():
    torch.testing.assert_close(guidance_scales(5, 1.0, 3.0), torch.tensor([1.0, 1.5, 2.0, 2.5, 3.0]))


class _Spy(torch.nn.Module):
    """Wraps a denoiser network and records the feedback it receives at each call."""

    def __init__(self, net):
        super().__init__()
        self.net, self.seen = net, []

    def forward(self, *args, feedback=None, **kw):
        self.seen.append(None if feedback is None else {k: float(v.abs().sum()) for k, v in feedback.items()})
        return self.net(*args, feedback=feedback, **kw)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.net, name)


@pytest.mark.parametrize("start,fed_steps", [(0.0, [1, 2, 3]), (0.5, [2, 3])])
def test_algorithm_2_feeds_each_reconstruction_into_the_next_step(start, fed_steps):
    model, params = _model()
    spy = _Spy(model.denoiser.net)
    model.denoiser = edm.EDMPrecond(spy)
    batch = synthetic_batch(params)
    out = sample(
        model,
        batch["input_view"],
        batch["K"],
        batch["c2w"],
        steps=4,
        guidance=(1.0, 1.0),
        feedback_start=start,
        seeds=[0] * len(batch["input_view"]),
        keep_steps=True,
    )
    # step 0 always sees zero maps; step i > 0 sees step i-1's renders inside the window
    nonzero = [i for i, s in enumerate(spy.seen) if s and all(v > 0 for v in s.values())]
    assert spy.seen[0] == {"ccm": 0.0, "rgb": 0.0}
    assert nonzero == fed_steps
    assert [r.fed_back for r in out.steps] == [i + 1 in fed_steps for i in range(4)]
    assert out.views.shape == batch["views"].shape
    assert 0 <= out.views.min() and out.views.max() <= 1
    assert out.gaussians is out.steps[-1].recon.gaussians


def test_sampling_is_deterministic_given_the_seed_and_runs_without_feedback():
    model, params = _model(feedback=False)
    batch = synthetic_batch(params)

    def run(mode):
        return sample(
            model,
            batch["input_view"],
            batch["K"],
            batch["c2w"],
            steps=3,
            reconstruct=mode,
            seeds=[3] * len(batch["input_view"]),
        )

    a, b, c, d = run("every_step"), run("every_step"), run("final"), run("none")
    torch.testing.assert_close(a.views, b.views, rtol=0, atol=0)
    # without feedback the recursion cannot change the views, only when G runs
    torch.testing.assert_close(a.views, c.views, rtol=0, atol=0)
    torch.testing.assert_close(a.views, d.views, rtol=0, atol=0)
    assert c.gaussians is not None and not c.steps
    assert d.gaussians is None and d.recon is None


def test_feedback_without_joint_training_is_rejected():
    from ouroboros3d.config import ParamsError

    with pytest.raises(ParamsError, match="joint"):
        tiny_params(joint=False)


def test_bf16_sampling_agrees_with_fp32_and_keeps_the_3d_side_in_fp32():
    """bf16 autocast covers F and G only: the sampled views stay within 35 dB PSNR of fp32's
    (a bf16 mantissa is 8 bits: ~0.4% per op), while the rasterizer and CCM stay float32."""
    model, params = _model()
    model.eval()
    batch = synthetic_batch(params)

    def run(precision):
        kwargs = dict(steps=3, keep_steps=True, mixed_precision=precision)
        return sample(
            model, batch["input_view"], batch["K"], batch["c2w"], seeds=[5] * len(batch["input_view"]), **kwargs
        )

    fp32, bf16 = run("no"), run("bf16")
    diff = (fp32.views - bf16.views).square().mean()
    assert 0 < diff, "bf16 autocast changed nothing: it is not in effect"
    assert -10 * torch.log10(diff) > 35, f"bf16 views {-10 * torch.log10(diff):.1f} dB from fp32's"
    recon = bf16.steps[-1].recon
    assert recon.rgb.dtype == recon.alpha.dtype == recon.ccm.dtype == torch.float32
    assert bf16.views.dtype == torch.float32
    with pytest.raises(ValueError, match="mixed_precision must be 'no' or 'bf16'"):
        run("fp16")


class _TwoPass(torch.nn.Module):
    """Wraps the preconditioned denoiser: a batch of 2B (guidance's [conditional; unconditional])
    runs as two passes of B, as guidance ran before it was batched; records each call's batch."""

    def __init__(self, denoiser, b):
        super().__init__()
        self.denoiser, self.b, self.batches = denoiser, b, []

    def forward(self, x, sigma, feedback=None, **cond):
        self.batches.append(x.shape[0])
        if x.shape[0] != 2 * self.b:
            return self.denoiser(x, sigma, feedback=feedback, **cond)
        halves = []
        for part in (slice(0, self.b), slice(self.b, None)):
            fed = None if feedback is None else {k: m[part] for k, m in feedback.items()}
            halves.append(self.denoiser(x[part], sigma, feedback=fed, **{k: c[part] for k, c in cond.items()}))
        return torch.cat(halves)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.denoiser, name)


@pytest.mark.parametrize("guidance_sigmas", [None, (0.5, 20.0)])
def test_batched_guidance_equals_two_passes_and_is_one_denoiser_call_per_step(guidance_sigmas):
    model, params = _model()
    model.eval()
    for p in model.denoiser.net.parameters():  # a non-trivial network: the two branches differ
        torch.nn.init.normal_(p, std=0.05)
    batch = synthetic_batch(params)
    b, steps = batch["input_view"].shape[0], 4
    kwargs = dict(steps=steps, guidance=(1.0, 3.0), guidance_sigmas=guidance_sigmas, sigma_max=80.0, keep_steps=True)
    batched = sample(model, batch["input_view"], batch["K"], batch["c2w"], **kwargs)
    model.denoiser = spy = _TwoPass(model.denoiser, b)
    two_pass = sample(model, batch["input_view"], batch["K"], batch["c2w"], **kwargs)
    sigmas = edm.karras_sigmas(steps, 0.002, 80.0)[:-1]
    inside = [guidance_sigmas is None or guidance_sigmas[0] <= s <= guidance_sigmas[1] for s in sigmas]
    assert any(inside)
    assert spy.batches == [2 * b if i else b for i in inside]  # one call per step, 2B where guided
    torch.testing.assert_close(batched.views, two_pass.views, rtol=0, atol=1e-5)
    for a, c in zip(batched.steps, two_pass.steps, strict=True):  # G's renders, fed back, agree too
        torch.testing.assert_close(a.recon.ccm, c.recon.ccm, rtol=0, atol=1e-5)
    unguided = sample(model, batch["input_view"], batch["K"], batch["c2w"], **kwargs | {"guidance": (1.0, 1.0)})
    assert (unguided.views - batched.views).abs().max() > 1e-3  # the guidance is in effect


def test_initial_noise_is_latent_shaped_and_each_objects_own():
    model, params = _model()
    noise = initial_noise(model, [3, 7], 4, 16, 16)
    ae = model.autoencoder
    assert noise.shape == (2, 4, ae.latent_channels, 16 // ae.downscale, 16 // ae.downscale)
    torch.testing.assert_close(initial_noise(model, [7], 4, 16, 16)[0], noise[1], rtol=0, atol=0)
    assert not torch.equal(noise[0], noise[1])
    # sampling draws it: an object's views do not depend on the batch it is sampled in
    batch = synthetic_batch(params)
    kwargs = dict(steps=2, sigma_max=80.0, reconstruct="none")
    both = sample(model, batch["input_view"], batch["K"], batch["c2w"], seeds=[3, 7], **kwargs)
    one = sample(model, batch["input_view"][1:], batch["K"][1:], batch["c2w"][1:], seeds=[7], **kwargs)
    # but for float rounding: a convolution over 2 samples may sum in another order than over 1
    torch.testing.assert_close(one.views[0], both.views[1], rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="1 seeds for a batch of 2"):
        sample(model, batch["input_view"], batch["K"], batch["c2w"], steps=1, seeds=[3])
