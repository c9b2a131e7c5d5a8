"""The diffusion formulation, independent of any network.

``edm``: EDM's preconditioning, noise distribution, loss and samplers (supplementary section
1.1, equations 2-9). The samplers share k-diffusion's signature ``(model, x, sigmas, callback)``.
"""
