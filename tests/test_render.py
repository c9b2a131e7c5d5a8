"""The CPU renderer and the render stage: exact depth, clean masks, CCM consistency, skips, determinism."""

import json
import shutil

import numpy as np
import pytest
import torch
import trimesh
import yaml
from conftest import load_script, tiny_raw

from ouroboros3d.config import params_from_dict
from ouroboros3d.data import layout
from ouroboros3d.data.mesh import normalize_to_unit_box
from ouroboros3d.data.render import render_views
from ouroboros3d.data.render_stage import (
    DatasetTooSmallError,
    draw_view_angles,
    merge_shards,
    read_manifest,
    render_dataset,
)
from ouroboros3d.geometry.cameras import camera_rays, intrinsics, orbit_c2w, project
from ouroboros3d.geometry.ccm import CCMNormalization, ccm_to_world, depth_to_ccm

render_script = load_script("render")
HALF = np.array([0.5, 0.3, 0.2])  # a box already in the unit box: longest side 1, centred
RADIUS, FOV, RES = 2.2, 39.6, 32


def coloured_box(half=HALF, rgba=(200, 60, 40, 255)) -> trimesh.Trimesh:
    box = trimesh.creation.box(extents=2 * np.asarray(half))
    box.visual = trimesh.visual.ColorVisuals(box, face_colors=np.tile(rgba, (len(box.faces), 1)))
    return box


def cameras(azimuths, elevation, res=RES):
    c2w = orbit_c2w(torch.tensor(azimuths, dtype=torch.float32), elevation, RADIUS)
    return intrinsics(FOV, res).expand(len(azimuths), 3, 3), c2w


def slab_depth(K, c2w, res, half=HALF):
    """Closed form: z-depth of an axis-aligned box along every pixel-centre ray (0 where it misses)."""
    origins, dirs = camera_rays(K.double(), c2w.double(), res, res)
    o, d = origins.numpy(), dirs.numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (-half - o) / d, (half - o) / d
    t_near, t_far = np.minimum(t1, t2).max(-1), np.maximum(t1, t2).min(-1)
    forward = c2w[:, None, None, :3, 2].double().numpy()
    return np.where(t_near < t_far, t_near * (d * forward).sum(-1), 0.0)


def test_front_view_of_a_box_has_constant_depth_and_the_analytic_silhouette():
    K, c2w = cameras([0.0], 0.0)  # camera on +X looking at the face x = 0.5 head on
    views = render_views(coloured_box(), K, c2w, RES, RES)
    # a plane facing the camera has constant z-depth: radius - 0.5
    fg = views.alpha[0] > 0
    np.testing.assert_allclose(views.depth[0][fg], RADIUS - 0.5, atol=1e-6, rtol=0)
    # silhouette: pixel centre (u, v) sees world y = (u - cx) d / f, z = -(v - cy) d / f (OpenCV, +Z up)
    f, c = K[0, 0, 0].item(), RES / 2
    v, u = np.mgrid[0:RES, 0:RES] + 0.5
    y, z = (u - c) * (RADIUS - 0.5) / f, -(v - c) * (RADIUS - 0.5) / f
    expected = (np.abs(y) < HALF[1]) & (np.abs(z) < HALF[2])
    np.testing.assert_array_equal(fg, expected)


@pytest.mark.parametrize(("azimuth", "elevation"), [(30.0, 20.0), (200.0, -10.0), (95.0, 45.0)])
def test_depth_matches_the_closed_form_box_intersection(azimuth, elevation):
    K, c2w = cameras([azimuth], elevation)
    views = render_views(coloured_box(), K, c2w, RES, RES)
    expected = slab_depth(K, c2w, RES)[0]
    np.testing.assert_array_equal(views.alpha[0] > 0, expected > 0)
    np.testing.assert_allclose(views.depth[0], expected, atol=1e-6, rtol=0)


def test_background_is_white_with_zero_alpha_and_depth_and_the_object_is_opaque():
    K, c2w = cameras([10.0, 100.0, 250.0], 15.0)
    views = render_views(coloured_box(), K, c2w, RES, RES)
    fg = views.alpha > 0
    assert set(np.unique(views.alpha)) == {0, 255}
    assert np.all(views.rgb[~fg] == 255) and np.all(views.depth[~fg] == 0)
    assert np.all(views.depth[fg] > 0)
    # the red box is shaded red, never white, on every object pixel
    obj = views.rgb[fg].astype(int)
    assert np.all(obj[:, 0] > obj[:, 1]) and np.all(obj[:, 1] < 200)
    assert views.rgb.dtype == np.uint8 and views.depth.dtype == np.float32


def test_ccm_of_a_surface_point_agrees_across_views():
    K, c2w = cameras([0.0, 45.0], 25.0, res=64)
    views = render_views(coloured_box(), K, c2w, 64, 64)
    norm = CCMNormalization()
    ccm = depth_to_ccm(torch.from_numpy(views.depth), K, c2w, norm)  # (2, 3, H, W)
    # every decoded point lies on the box surface
    points = ccm_to_world(ccm, norm)[torch.from_numpy(views.depth) > 0].double().numpy()
    on_surface = np.abs(np.abs(points) / HALF).max(-1)
    np.testing.assert_allclose(on_surface, 1.0, atol=1e-6)
    # a surface point seen by view 0 has the same CCM in view 1: interpolate view 1's CCM bilinearly at the
    # point's projection, where the four surrounding pixel centres lie on the point's own (planar) box face
    fg0, fg1 = views.depth[0] > 0, views.depth[1] > 0
    face = np.abs(points / HALF).argmax(-1) + 3 * (points[np.arange(len(points)), np.abs(points / HALF).argmax(-1)] > 0)
    face0, face1 = np.full((64, 64), -1), np.full((64, 64), -1)
    face0[fg0], face1[fg1] = face[: fg0.sum()], face[fg0.sum() :]
    world = torch.from_numpy(points[: fg0.sum()]).float()
    uv, _ = project(world, K[1], torch.linalg.inv(c2w[1]))
    x, y = uv[:, 0].double().numpy() - 0.5, uv[:, 1].double().numpy() - 0.5  # pixel-centre grid coordinates
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    inside = (x0 >= 0) & (y0 >= 0) & (x0 < 63) & (y0 < 63)
    x0, y0, fx, fy = x0[inside], y0[inside], (x - np.floor(x))[inside, None], (y - np.floor(y))[inside, None]
    corners = [(y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)]
    same_face = np.all([face1[r, c] == face0[fg0][inside] for r, c in corners], axis=0)
    assert same_face.sum() > 200
    grid = ccm[1].permute(1, 2, 0).double().numpy()
    c00, c01, c10, c11 = (grid[r, c] for r, c in corners)
    interpolated = (c00 * (1 - fx) + c01 * fx) * (1 - fy) + (c10 * (1 - fx) + c11 * fx) * fy
    ccm0 = ccm[0].permute(1, 2, 0).double().numpy()[fg0][inside]
    np.testing.assert_allclose(interpolated[same_face], ccm0[same_face], atol=2e-3, rtol=0)


def test_normalisation_centres_scales_and_turns_y_up_to_z_up():
    box = trimesh.creation.box(extents=(2.0, 8.0, 4.0))
    box.apply_translation((5.0, -3.0, 1.0))
    unit = normalize_to_unit_box(box, "+Y")
    lo, hi = unit.bounds
    np.testing.assert_allclose((lo + hi) / 2, 0.0, atol=1e-12)
    np.testing.assert_allclose(hi - lo, [0.25, 0.5, 1.0], atol=1e-12)  # the long Y side is now Z
    assert len(unit.faces) == len(box.faces) and np.allclose(box.bounds[1], [6.0, 1.0, 3.0])  # input untouched


def test_view_angles_are_a_pure_function_of_seed_and_object_within_range():
    a = draw_view_angles(0, "ycb-025_mug", (0.0, 20.0))
    assert a == draw_view_angles(0, "ycb-025_mug", (0.0, 20.0))
    assert a != draw_view_angles(1, "ycb-025_mug", (0.0, 20.0))
    assert a != draw_view_angles(0, "ycb-024_bowl", (0.0, 20.0))
    for k in range(50):
        elevation, azimuth = draw_view_angles(k, f"obj{k}", (-5.0, 30.0))
        assert -5.0 <= elevation <= 30.0 and 0.0 <= azimuth < 360.0


# --- the render stage on a folder source ----------------------------------------


def write_mesh_folder(folder, good=2, broken=True):
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(good):
        box = trimesh.creation.box(extents=(1.0, 0.5 + 0.2 * k, 0.3))
        box.export(folder / f"box{k}.obj")
    if broken:
        (folder / "garbage.obj").write_bytes(b"\x00\xffthis is not an obj\nf 1 2 99\n")  # loads as nothing
        (folder / "corrupt.glb").write_bytes(b"not a glTF binary")  # the loader raises
        # a flat triangle in the XY plane: edge-on from every camera at elevation 0, so no pixel
        flat = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 1, 2]])
        flat.export(folder / "flat.ply")
    return folder


def folder_params(folder, **data):
    return params_from_dict(folder_raw(folder, **data))


def folder_raw(folder, **data):
    return {
        "data": {
            "resolution": 16,
            "workers": 1,
            "min_objects": 1,
            "folder": str(folder),
            "train": {"source": "folder", "max_objects": 10, "elevation_deg": [0.0, 0.0]},
            **data,
        },
    }


def test_bad_meshes_are_skipped_with_their_reason_and_the_stage_goes_on(tmp_path, capsys):
    params = folder_params(write_mesh_folder(tmp_path / "meshes"))
    manifest = render_dataset(params, tmp_path / "renders", splits=("train",), progress=False)
    rows = manifest.set_index("object_id")
    assert list(rows.status[["folder-box0", "folder-box1"]]) == ["ok", "ok"]
    assert rows.status["folder-garbage"] == "skipped"
    assert rows.skip_reason["folder-garbage"].startswith("empty mesh")
    assert rows.status["folder-corrupt"] == "skipped" and rows.skip_reason["folder-corrupt"].startswith("load failed")
    assert rows.status["folder-flat"] == "skipped"
    assert rows.skip_reason["folder-flat"] == "rendered no pixels in the input view"
    # the manifest on disk says the same; only ok objects have folders
    on_disk = read_manifest(tmp_path / "renders")
    assert list(on_disk.object_id) == list(manifest.object_id) and set(on_disk.split) == {"train"}
    assert layout.list_objects(tmp_path / "renders" / "train") == ["folder-box0", "folder-box1"]
    assert "train: 2 ok, 3 skipped" in capsys.readouterr().out
    cams = json.loads((tmp_path / "renders/train/folder-box0/cameras.json").read_text())
    assert np.array(cams["K"]).shape == (8, 3, 3) and np.array(cams["c2w"]).shape == (8, 4, 4)
    assert cams["resolution"] == 16 and len(cams["azimuth_deg"]) == 8 and cams["elevation_deg"] == 0.0
    assert np.load(tmp_path / "renders/train/folder-box0/depth.npy").shape == (8, 16, 16)


def test_a_split_below_min_objects_fails_the_stage_with_a_clear_message(tmp_path, capsys):
    folder = write_mesh_folder(tmp_path / "meshes", good=1)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(
        json.dumps(
            {
                "data": {
                    "resolution": 8,
                    "workers": 1,
                    "min_objects": 2,
                    "folder": str(folder),
                    "train": {"source": "folder", "elevation_deg": [0, 0]},
                },
            }
        )
    )
    code = render_script.main(["--params", str(params_file), "--out", str(tmp_path / "r"), "--splits", "train"])
    assert code == 2
    err = capsys.readouterr().err
    assert "'train' has 1 usable object(s), fewer than data.min_objects=2" in err
    assert (tmp_path / "r" / "manifest.csv").is_file()  # written anyway, to show the skip reasons
    with pytest.raises(DatasetTooSmallError):
        render_dataset(folder_params(folder, min_objects=5), tmp_path / "r2", splits=("train",), progress=False)


def test_train_and_eval_may_not_share_objects(tmp_path):
    params = folder_params(
        write_mesh_folder(tmp_path / "m", broken=False), eval={"source": "folder", "elevation_deg": [0, 0]}
    )
    with pytest.raises(ValueError, match="train and eval share 2 object"):
        render_dataset(params, tmp_path / "r", progress=False)


def test_rendering_is_byte_identical_on_rerun_and_across_worker_counts(tmp_path):
    folder = write_mesh_folder(tmp_path / "meshes", good=3, broken=False)
    render_dataset(folder_params(folder, workers=1), tmp_path / "a", splits=("train",), progress=False)
    render_dataset(folder_params(folder, workers=2), tmp_path / "b", splits=("train",), progress=False)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 1 + 3 * (2 * 8 + 2)
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_shards_merge_into_the_unsharded_render(tmp_path, capsys):
    folder = write_mesh_folder(tmp_path / "meshes", good=3, broken=False)
    params = folder_params(folder, workers=1)
    render_dataset(params, tmp_path / "one", splits=("train",), progress=False)
    shards = tmp_path / "shards"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(folder_raw(folder, workers=1)))
    argv = ["--params", str(tmp_path / "params.yaml"), "--out", str(shards), "--splits", "train"]
    render = load_script("render")
    for i in (1, 0):  # any order, as on separate machines
        assert render.main([*argv, "--shard", f"{i}/2", "--no-progress"]) == 0
    assert not (shards / layout.MANIFEST_FILE).exists()  # no manifest until the merge
    # a shard killed mid-object (its folder not yet renamed into place, a temporary left) is
    # re-run with --resume: it renders what is missing, keeps what was finished, drops the temporary
    killed = sorted(p for p in (shards / "train").iterdir() if p.is_dir())[0]
    shutil.rmtree(killed)
    (shards / "train" / f".tmp-{killed.name}-killed").mkdir()
    stamps = {p: p.stat().st_mtime_ns for p in (shards / "train").rglob("*.npy")}
    for i in (0, 1):  # whichever shard the killed object belongs to
        assert render.main([*argv, "--shard", f"{i}/2", "--resume", "--no-progress"]) == 0
    assert stamps and all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert (killed / "depth.npy").is_file() and not list((shards / "train").glob(".tmp-*"))
    assert render.main([*argv, "--merge", "2"]) == 0
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(shards) for p in shards.rglob("*") if p.is_file())  # shard manifests gone
    for rel in files:
        assert (tmp_path / "one" / rel).read_bytes() == (shards / rel).read_bytes(), rel
    # a merge with a shard missing names it and writes nothing
    render_dataset(params, tmp_path / "half", splits=("train",), progress=False, shard=(0, 3))
    with pytest.raises(FileNotFoundError, match="shard-1-of-3"):
        merge_shards(params, tmp_path / "half", 3, ("train",))
    assert not (tmp_path / "half" / layout.MANIFEST_FILE).exists()
    capsys.readouterr()
    assert render.main([*argv, "--shard", "2/2"]) == 2  # a usage error: one error line, exit 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "0 <= I < N" in err[0]


def test_resume_reuses_finished_objects_and_reruns_drop_stale_ones(tmp_path):
    folder = write_mesh_folder(tmp_path / "meshes", good=2, broken=False)
    out = tmp_path / "r"
    render_dataset(folder_params(folder), out, splits=("train",), progress=False)
    depth = out / "train/folder-box0/depth.npy"
    stamp = depth.stat().st_mtime_ns
    (out / "train/.tmp-folder-box1-xyz").mkdir()  # as left by an interrupted run
    render_dataset(folder_params(folder), out, splits=("train",), resume=True, progress=False)
    assert depth.stat().st_mtime_ns == stamp and not list((out / "train").glob(".tmp-*"))
    (folder / "box1.obj").unlink()
    render_dataset(folder_params(folder), out, splits=("train",), progress=False)
    assert layout.list_objects(out / "train") == ["folder-box0"]


def test_an_object_folder_appears_whole_or_not_at_all(tmp_path):
    with pytest.raises(RuntimeError, match="interrupted"), layout.atomic_object_dir(tmp_path, "obj") as tmp:
        (tmp / "rgb_00.png").write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with layout.atomic_object_dir(tmp_path, "obj") as tmp:
        (tmp / "cameras.json").write_text("{}")
    assert [p.name for p in tmp_path.iterdir()] == ["obj"] and (tmp_path / "obj/cameras.json").is_file()


def test_bad_params_stop_the_render_stage_with_one_error_line(tmp_path, capsys):
    for bad in ({"data": {"resolution": "big"}}, {"camera": {"view_frames": [3, 2]}}):
        params_file = tmp_path / "params.yaml"
        params_file.write_text(yaml.safe_dump(tiny_raw(**bad)))
        assert render_script.main(["--params", str(params_file), "--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err


def test_real_training_objects_are_outside_val_and_eval_and_each_orbit_differs():
    from ouroboros3d.data.render_stage import base_object_id, plan_split

    params = params_from_dict(tiny_raw(data={"train": {"max_objects": 3, "real_objects": 2, "real_orbits": 3}}))
    train = plan_split(params, "train", "unused")
    real = [job for job in train if job.obj.source == "ycb"]
    assert len(train) == 3 + 2 * 3 and len(real) == 6
    held = {base_object_id(j.obj.object_id) for split in ("val", "eval") for j in plan_split(params, split, "unused")}
    assert len({base_object_id(j.obj.object_id) for j in real}) == 2
    assert not held & {base_object_id(j.obj.object_id) for j in real}
    assert len({(j.elevation_deg, j.azimuth_offset_deg) for j in real}) == 6  # one random orbit per copy
    with pytest.raises(ValueError, match=r"data\.eval\.real_objects"):
        params_from_dict(tiny_raw(data={"eval": {"real_objects": 1}}))


def _fake_libero(root, monkeypatch):
    """Three textured scans of two shapes: ``quad`` and its recoloured copy ``red_quad``, and ``tri``."""
    from ouroboros3d.data import sources

    def scan(folder, name, vertices, colour):
        obj_dir = root / folder / name
        obj_dir.mkdir(parents=True)
        (obj_dir / "m.mtl").write_text(f"newmtl m\nKd {colour}\n")
        faces = "f 1 2 3\nf 1 3 4\n" if len(vertices) == 4 else "f 1 2 3\n"
        (obj_dir / "model.obj").write_text("mtllib m.mtl\nusemtl m\n" + "".join(f"v {v}\n" for v in vertices) + faces)

    quad = ["-1 -1 0", "1 -1 0", "1 1 0", "-1 1 0"]
    scan("stable_hope_objects", "quad", quad, "1 1 1")
    scan("stable_hope_objects", "red_quad", quad, "1 0 0")
    scan("stable_scanned_objects", "tri", ["0 0 0", "1 0 0", "0 1 1"], "0 0 1")
    monkeypatch.setattr(sources, "find_libero_assets", lambda: root)


def test_textured_training_scans_keep_their_copies_and_leave_eval_the_other_shapes(tmp_path, monkeypatch):
    from ouroboros3d.build import training_fingerprint
    from ouroboros3d.data.render_stage import base_object_id, plan_split

    _fake_libero(tmp_path, monkeypatch)
    raw = tiny_raw(data={"train": {"textured_objects": 1, "real_orbits": 2}, "eval_textured": True})
    params = params_from_dict(raw)
    train = [j.obj.object_id for j in plan_split(params, "train", "unused") if j.obj.source == "libero"]
    scans = {base_object_id(i) for i in train}
    evaluated = {j.obj.object_id for j in plan_split(params, "eval", "unused") if j.obj.source == "libero"}
    # one shape: the quad with its recoloured copy, or the triangle; the other shape evaluates
    assert scans in ({"libero-hope-quad", "libero-hope-red_quad"}, {"libero-gso-tri"})
    assert len(train) == 2 * len(scans)  # every copy along every orbit
    assert evaluated == {"libero-hope-quad", "libero-hope-red_quad", "libero-gso-tri"} - scans
    # set, the key changes what training sees (unset, it leaves the published fingerprints as they
    # were before it existed: tests/test_published_weights.py)
    unset = params_from_dict(tiny_raw(data={"train": {"real_orbits": 2}, "eval_textured": True}))
    assert training_fingerprint(params) != training_fingerprint(unset)
    with pytest.raises(DatasetTooSmallError, match="2 distinct shapes"):
        plan_split(params_from_dict(tiny_raw(data={"train": {"textured_objects": 3}})), "train", "unused")
    with pytest.raises(ValueError, match=r"data\.val\.textured_objects"):
        params_from_dict(tiny_raw(data={"val": {"textured_objects": 1}}))
