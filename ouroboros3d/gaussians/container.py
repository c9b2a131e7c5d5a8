"""Batched 3D Gaussians and their standard 3DGS ``.ply`` file.

A :class:`Gaussians` holds B objects of N Gaussians each, in *activated* form (the values
the renderer uses, not the optimiser's raw parameters):

* ``means``     (B, N, 3) world positions (+Z-up world, objects in the unit box),
* ``quats``     (B, N, 4) unit quaternions, **wxyz** order,
* ``scales``    (B, N, 3) standard deviations along the rotated axes, positive, linear,
* ``opacities`` (B, N)    in [0, 1],
* ``colors``    (B, N, 3) RGB in [0, 1] (SH degree 0: view-independent).

The ``.ply`` layout is the one written by the INRIA 3DGS code and opened by the common
viewers (SuperSplat, antimatter15's splat viewer, gsplat's exporter): one ``vertex`` element
with float32 ``x y z nx ny nz f_dc_0 f_dc_1 f_dc_2 opacity scale_0 scale_1 scale_2 rot_0
rot_1 rot_2 rot_3``, where the file stores raw parameters: ``f_dc = (rgb - 0.5) / C0`` (the
SH DC coefficient, ``C0 = 0.28209479177387814``), ``opacity = logit(opacity)``,
``scale = log(scale)``, ``rot`` = the wxyz quaternion; normals are zero.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from ..files import atomic_write_bytes

__all__ = ["SH_C0", "Gaussians", "load_ply", "rgb_to_sh_dc", "save_ply", "sh_dc_to_rgb"]

SH_C0 = 0.28209479177387814  # the degree-0 real spherical harmonic, 1 / (2 sqrt(pi))
_PLY_PROPERTIES = (
    ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]
    + [f"scale_{i}" for i in range(3)]
    + [f"rot_{i}" for i in range(4)]
)
# logit and log are clamped here so that opacity 0 or 1 and a zero scale stay finite on disk
_OPACITY_EPS = 1e-6
_MIN_SCALE = 1e-12


@dataclass
class Gaussians:
    """B objects of N 3D Gaussians each; see the module docstring for shapes and ranges.

    Indexing (``g[i]``, ``g[i:j]``) selects objects and keeps the batch axis, so one object
    is a ``Gaussians`` with B = 1 and works everywhere a batch does.
    """

    means: torch.Tensor
    quats: torch.Tensor
    scales: torch.Tensor
    opacities: torch.Tensor
    colors: torch.Tensor

    def __post_init__(self):
        if self.means.ndim != 3 or self.means.shape[-1] != 3:
            raise ValueError(f"means must be (B, N, 3), got {tuple(self.means.shape)}")
        b, n = self.means.shape[:2]
        expected = {"quats": (b, n, 4), "scales": (b, n, 3), "opacities": (b, n), "colors": (b, n, 3)}
        for name, shape in expected.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(f"{name} must be {shape} to match means {(b, n, 3)}, got {got}")

    # -- shape and placement ------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.means.shape[0]

    @property
    def num_gaussians(self) -> int:
        return self.means.shape[1]

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    def _map(self, fn) -> Gaussians:
        return Gaussians(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def to(self, *args, **kwargs) -> Gaussians:
        """``Tensor.to`` on every field (device and/or dtype)."""
        return self._map(lambda t: t.to(*args, **kwargs))

    def detach(self) -> Gaussians:
        return self._map(torch.Tensor.detach)

    def __getitem__(self, index: int | slice) -> Gaussians:
        if isinstance(index, int):
            if not -self.batch_size <= index < self.batch_size:
                raise IndexError(f"object {index} out of range for a batch of {self.batch_size}")
            index = slice(index % self.batch_size, index % self.batch_size + 1)
        if not isinstance(index, slice):
            raise TypeError(f"Gaussians index must be an int or a slice, got {type(index).__name__}")
        return self._map(lambda t: t[index])

    def __len__(self) -> int:
        return self.batch_size

    @staticmethod
    def cat(items: list[Gaussians], dim: int = 0) -> Gaussians:
        """Concatenate objects (``dim=0``) or the Gaussians of each object (``dim=1``)."""
        if dim not in (0, 1):
            raise ValueError(f"dim must be 0 (objects) or 1 (Gaussians), got {dim}")
        return Gaussians(**{f.name: torch.cat([getattr(g, f.name) for g in items], dim=dim) for f in fields(Gaussians)})


def rgb_to_sh_dc(rgb: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] to the SH DC coefficient that 3DGS viewers expect (``(rgb - 0.5) / C0``)."""
    return (rgb - 0.5) / SH_C0


def sh_dc_to_rgb(dc: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_sh_dc` (not clamped)."""
    return dc * SH_C0 + 0.5


def save_ply(path: str | os.PathLike, gaussians: Gaussians, min_opacity: float = 0.0) -> Path:
    """Write one object's Gaussians (B must be 1; use ``g[i]``) as a standard 3DGS ``.ply``.

    Gaussians with opacity below ``min_opacity`` are left out (viewers draw them anyway,
    slowly). The file is written to a temporary name in the same folder and then renamed,
    so a reader never sees a half-written file. Returns the path.
    """
    from plyfile import PlyData, PlyElement

    if gaussians.batch_size != 1:
        raise ValueError(f"save_ply writes one object, got a batch of {gaussians.batch_size}: pass gaussians[i]")
    g = gaussians[0].detach().to(device="cpu", dtype=torch.float64)
    keep = g.opacities[0] >= min_opacity
    means, quats, scales = g.means[0][keep], g.quats[0][keep], g.scales[0][keep]
    opacity, colors = g.opacities[0][keep], g.colors[0][keep]

    opacity = opacity.clamp(_OPACITY_EPS, 1.0 - _OPACITY_EPS)
    columns = torch.cat(
        [
            means,
            torch.zeros_like(means),  # normals, unused by 3DGS viewers but part of the layout
            rgb_to_sh_dc(colors),
            torch.logit(opacity)[:, None],
            scales.clamp_min(_MIN_SCALE).log(),
            quats,
        ],
        dim=1,
    ).numpy()
    vertex = np.empty(columns.shape[0], dtype=[(name, "f4") for name in _PLY_PROPERTIES])
    for i, name in enumerate(_PLY_PROPERTIES):
        vertex[name] = columns[:, i]

    path = Path(path)
    buffer = io.BytesIO()
    PlyData([PlyElement.describe(vertex, "vertex")], byte_order="<").write(buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load_ply(path: str | os.PathLike, device: torch.device | str = "cpu") -> Gaussians:
    """Read a 3DGS ``.ply`` (degree-0 colour; higher SH bands are ignored) as B = 1 Gaussians.

    Quaternions are normalised (files from other tools often store raw ones).
    """
    from plyfile import PlyData

    vertex = PlyData.read(str(path))["vertex"]
    names = vertex.data.dtype.names
    missing = [n for n in _PLY_PROPERTIES if n not in names and not n.startswith("n")]
    if missing:
        raise ValueError(f"{path}: not a 3DGS .ply, missing properties {missing}")

    def column(*keys: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([np.asarray(vertex[k], dtype=np.float32) for k in keys], axis=-1))

    quats = torch.nn.functional.normalize(column("rot_0", "rot_1", "rot_2", "rot_3"), dim=-1)
    g = Gaussians(
        means=column("x", "y", "z")[None],
        quats=quats[None],
        scales=column("scale_0", "scale_1", "scale_2").exp()[None],
        opacities=torch.sigmoid(column("opacity")[:, 0])[None],
        colors=sh_dc_to_rgb(column("f_dc_0", "f_dc_1", "f_dc_2"))[None],
    )
    return g.to(device)
