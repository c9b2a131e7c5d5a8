"""The networks, each knowing nothing of EDM or of training.

``denoiser`` (F: SVD's spatio-temporal UNet with camera and feedback inputs) with
``conditioning`` (its input-view encoder and camera embedding) and ``feedback`` (the feedback
injection networks, Table 1); ``reconstructor`` (G: views to 3D Gaussians, LGM-style) with
``reconstructor_blocks`` (its U-Net's residual, attention and level blocks); ``autoencoder``
(pixel space or SVD's VAE latent space, one interface); ``architecture`` (the rules F's and G's
arguments must follow, torch-free, which :mod:`ouroboros3d.config` checks params.yaml with).
"""
