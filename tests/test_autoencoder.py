"""Pixel and VAE latent spaces behind one interface."""

import pytest
import torch

import ouroboros3d  # noqa: F401  (makes diffusers importable on CPU-only torch)
from ouroboros3d.models.autoencoder import PixelAutoencoder, VAEAutoencoder

# A tiny random SVD-style VAE: two levels (downscale 2), 4 latent channels.
TINY_VAE = {
    "block_out_channels": [32, 32],
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "layers_per_block": 1,
    "latent_channels": 4,
}


def test_pixel_round_trip_is_exact():
    ae = PixelAutoencoder()
    assert ae.latent_channels == 3 and ae.downscale == 1
    dyadic = torch.randint(0, 257, (2, 4, 3, 8, 8)) / 256.0
    latents = ae.encode(dyadic)
    assert latents.shape == dyadic.shape
    assert latents.min() >= -1 and latents.max() <= 1
    assert torch.equal(ae.decode(latents), dyadic)  # bit-exact on dyadic values
    images = torch.rand(2, 4, 3, 8, 8)
    torch.testing.assert_close(ae.decode(ae.encode(images)), images, atol=1e-7, rtol=0)
    single = torch.rand(2, 3, 8, 8)
    assert ae.encode(single).shape == (2, 3, 8, 8)


def test_pixel_decode_is_differentiable_and_unclamped():
    ae = PixelAutoencoder()
    latents = torch.tensor([-1.5, 0.0, 1.5]).view(1, 1, 3, 1, 1).requires_grad_()
    images = ae.decode(latents)
    assert images.min() < 0 and images.max() > 1
    images.sum().backward()
    assert torch.equal(latents.grad, torch.full_like(latents, 0.5))


def test_vae_shapes_and_differentiable_decode():
    torch.manual_seed(0)
    ae = VAEAutoencoder.from_config(TINY_VAE)
    assert ae.latent_channels == 4 and ae.downscale == 2
    assert ae.scaling_factor == pytest.approx(0.18215)
    images = torch.rand(2, 3, 3, 16, 16)
    latents = ae.encode(images)
    assert latents.shape == (2, 3, 4, 8, 8)
    assert ae.encode(images[:, 0]).shape == (2, 4, 8, 8)
    assert torch.allclose(ae.encode(images[:, :1])[:, 0], latents[:, 0], atol=1e-5)
    sampled = ae.encode(images, sample=True, generator=torch.Generator().manual_seed(0))
    assert sampled.shape == latents.shape and not torch.equal(sampled, latents)

    latents = latents.detach().requires_grad_()
    decoded = ae.decode(latents)
    assert decoded.shape == (2, 3, 3, 16, 16)
    decoded.square().mean().backward()
    assert latents.grad is not None and latents.grad.abs().sum() > 0
    # The temporal decoder mixes views: the decode of one view depends on the others.
    with torch.no_grad():
        moved = latents.detach().clone()
        moved[:, 1:] += 1.0
        assert not torch.allclose(ae.decode(moved)[:, 0], decoded.detach()[:, 0])


def test_vae_from_missing_folder_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="hub ids are not accepted"):
        VAEAutoencoder.from_folder(tmp_path / "svd" / "vae")
