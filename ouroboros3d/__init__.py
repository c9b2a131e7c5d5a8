"""ouroboros3d: a replication of Ouroboros3D, image-to-3D by 3D-aware recursive diffusion.

The package, by role (each subpackage's docstring names its modules):

* ``geometry`` (cameras, CCMs) and ``diffusion`` (EDM): the paper's maths, leaves of the
  import graph;
* ``models`` (F's denoiser, the feedback networks, G's reconstructor, the autoencoder) and
  ``gaussians`` (the container, splatting, meshing): the networks and the 3D representation;
* ``model``: Ouroboros3D itself, Algorithm 1 (training losses) and Algorithm 2 (the recursive
  sampler); ``build``: the model from the params;
* ``data`` (sources, rendering, CCMs, the dataset), ``training``, ``inference`` (the saved
  pipeline, ``generate``, the command), ``evaluation``, ``reporting``: the pipeline's stages;
* top level: ``config`` (params.yaml as typed, checked dataclasses), ``errors`` (one-line
  errors and exit codes), ``files`` (atomic writes, weights saved the diffusers way),
  ``progress`` (progress bars and log lines), ``_compat``.

``tests/test_layout.py`` checks that the imports between them form no cycle.
"""

from ._compat import ensure_torchvision_importable

ensure_torchvision_importable()

__version__ = "0.1.0"
