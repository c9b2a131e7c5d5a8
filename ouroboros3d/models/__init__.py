"""The networks, each knowing nothing of EDM or of training.

``denoiser`` (F: SVD's spatio-temporal UNet with cameras and feedback inputs), ``feedback``
(the feedback injection networks, Table 1), ``reconstructor`` (G: views to 3D Gaussians,
LGM-style), ``autoencoder`` (pixel space or SVD's VAE latent space, one interface).
"""
