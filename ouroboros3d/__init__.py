"""ouroboros3d: a replication of Ouroboros3D, image-to-3D by 3D-aware recursive diffusion.

Modules: ``edm`` (preconditioning, loss, samplers), ``cameras`` (orbit cameras, rays),
``ccm`` (canonical coordinate maps), ``config`` (params.yaml as typed dataclasses).
"""

from ._compat import ensure_torchvision_importable

ensure_torchvision_importable()

__version__ = "0.1.0"
