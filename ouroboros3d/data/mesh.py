"""Mesh preparation for rendering: unit-box normalisation and surface colour (albedo) lookup.

Every mesh is rotated so its up axis is world +Z, then centred (bounding-box centre at the
origin) and scaled uniformly so its longest side is 1: it fits the unit box [-0.5, 0.5]^3
that the cameras and the CCM normalisation assume.

Colour is looked up per ray hit (face id + barycentric coordinates) from, in this order:
a texture image with UVs (bilinear, wrapping), vertex colours (interpolated), face colours,
a material's uniform colour, and finally a neutral grey.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import trimesh

__all__ = ["NEUTRAL_GREY", "UP_AXES", "EmptyMeshError", "albedo_lookup", "crease_normals", "normalize_to_unit_box"]

# rotations taking each supported up axis to +Z (right-handed, proper rotations)
UP_AXES = {
    "+Z": np.eye(3),
    "+Y": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]),  # +90 deg about X: y -> z
    "-Y": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]),
    "+X": np.array([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]),  # -90 deg about Y: x -> z
}
NEUTRAL_GREY = np.array([0.7, 0.7, 0.7])

AlbedoFn = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (face ids (N,), barycentrics (N,3)) -> RGB (N,3)


class EmptyMeshError(ValueError):
    """The mesh has no triangles, or all its vertices coincide."""


def normalize_to_unit_box(mesh: trimesh.Trimesh, up_axis: str = "+Z") -> trimesh.Trimesh:
    """A copy of ``mesh`` with ``up_axis`` turned to +Z, centred, longest side scaled to 1."""
    if up_axis not in UP_AXES:
        raise ValueError(f"unknown up axis {up_axis!r}; have {sorted(UP_AXES)}")
    if len(mesh.faces) == 0 or len(mesh.vertices) == 0:
        raise EmptyMeshError("mesh has no triangles")
    vertices = np.asarray(mesh.vertices, dtype=np.float64) @ UP_AXES[up_axis].T
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    size = float((hi - lo).max())
    if not np.isfinite(size) or size <= 0:
        raise EmptyMeshError(f"mesh has zero or non-finite extent ({size})")
    out = mesh.copy()
    # assigning vertices keeps faces, UVs and colours (they index vertices, not positions)
    out.vertices = (vertices - (lo + hi) / 2) / size
    return out


def _texture_image(visual) -> np.ndarray | None:
    material = getattr(visual, "material", None)
    image = getattr(material, "image", None)
    if image is None:
        image = getattr(material, "baseColorTexture", None)
    if image is None or getattr(visual, "uv", None) is None:
        return None
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _material_color(visual) -> np.ndarray | None:
    material = getattr(visual, "material", None)
    color = getattr(material, "main_color", None)
    return None if color is None else np.asarray(color[:3], dtype=np.float64) / 255.0


def _bilinear(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Sample an (h, w, 3) uint8 image at UVs (N, 2) (origin bottom-left, wrapping) -> (N, 3) in [0, 1]."""
    h, w = image.shape[:2]
    x = np.mod(uv[:, 0], 1.0) * w - 0.5
    y = (1.0 - np.mod(uv[:, 1], 1.0)) * h - 0.5  # image rows run top-down, v runs bottom-up
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    x1, y1 = (x0 + 1) % w, (y0 + 1) % h
    x0, y0 = x0 % w, y0 % h

    def at(yy, xx):  # gather uint8 texels, then convert only those (textures can be 4096^2)
        return image[yy, xx].astype(np.float64)

    top = at(y0, x0) * (1 - fx) + at(y0, x1) * fx
    bottom = at(y1, x0) * (1 - fx) + at(y1, x1) * fx
    return (top * (1 - fy) + bottom * fy) / 255.0


def albedo_lookup(mesh: trimesh.Trimesh) -> AlbedoFn:
    """A function giving the surface colour (RGB in [0, 1]) at ray hits on ``mesh``."""
    visual = mesh.visual
    faces = np.asarray(mesh.faces)
    kind = getattr(visual, "kind", None)
    if kind == "texture":
        image = _texture_image(visual)
        if image is not None:
            uv = np.asarray(visual.uv, dtype=np.float64)

            def from_texture(face_ids, bary):
                hit_uv = np.einsum("nk,nkc->nc", bary, uv[faces[face_ids]])
                return _bilinear(image, hit_uv)

            return from_texture
        color = _material_color(visual)
        if color is not None:
            return lambda face_ids, bary: np.broadcast_to(color, (len(face_ids), 3))
    if kind == "vertex":
        vertex_rgb = np.asarray(visual.vertex_colors[:, :3], dtype=np.float64) / 255.0
        return lambda face_ids, bary: np.einsum("nk,nkc->nc", bary, vertex_rgb[faces[face_ids]])
    if kind == "face":
        face_rgb = np.asarray(visual.face_colors[:, :3], dtype=np.float64) / 255.0
        return lambda face_ids, bary: face_rgb[face_ids]
    return lambda face_ids, bary: np.broadcast_to(NEUTRAL_GREY, (len(face_ids), 3))


def crease_normals(mesh: trimesh.Trimesh, crease_deg: float = 40.0) -> np.ndarray:
    """Per-corner shading normals (F, 3, 3): smooth across edges, sharp at creases.

    A corner's normal is the area-weighted mean of the normals of the faces that share its
    vertex POSITION (so UV seams do not show) and lie within ``crease_deg`` of its own face.
    Faces wound the other way (scans mix windings) point the opposite way, fall outside the
    angle and are left out, so they do not cancel the average. Normals keep their face's
    orientation; the renderer makes them two-sided.
    """
    face_normals = np.asarray(mesh.face_normals, dtype=np.float64)
    area = np.asarray(mesh.area_faces, dtype=np.float64)
    num_faces = len(face_normals)
    _, position_id = np.unique(np.round(np.asarray(mesh.vertices), 9), axis=0, return_inverse=True)
    corner_position = position_id.reshape(-1)[np.asarray(mesh.faces)].reshape(-1)  # (3F,)
    corner_face = np.repeat(np.arange(num_faces), 3)
    order = np.argsort(corner_position, kind="stable")
    sorted_position, sorted_face = corner_position[order], corner_face[order]
    # every pair (corner i, face j) of corners at the same position, enumerated group by group
    starts = np.flatnonzero(np.r_[True, sorted_position[1:] != sorted_position[:-1]])
    counts = np.diff(np.r_[starts, len(sorted_position)])
    group = np.repeat(np.arange(len(starts)), counts)
    pairs_per_corner = counts[group]
    i = np.repeat(np.arange(len(sorted_position)), pairs_per_corner)
    offset = np.arange(len(i)) - np.repeat(np.cumsum(pairs_per_corner) - pairs_per_corner, pairs_per_corner)
    j = starts[group[i]] + offset
    face_i, face_j = sorted_face[i], sorted_face[j]
    within = np.einsum("nc,nc->n", face_normals[face_i], face_normals[face_j]) > np.cos(np.radians(crease_deg))
    weight = area[face_j] * within
    summed = np.stack(
        [np.bincount(i, weights=weight * face_normals[face_j, c], minlength=len(order)) for c in range(3)], axis=1
    )
    normals = np.empty_like(summed)
    normals[order] = summed
    normals = normals.reshape(num_faces, 3, 3)
    length = np.linalg.norm(normals, axis=-1, keepdims=True)
    own = np.broadcast_to(face_normals[:, None, :], normals.shape)
    return np.where(length > 1e-12, normals / np.maximum(length, 1e-12), own)
