"""ouroboros3d.evaluation.metrics against hand-computed values, and the "unavailable" paths."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from ouroboros3d.evaluation import metrics
from ouroboros3d.geometry.cameras import intrinsics


def test_psnr_of_known_images():
    target = torch.full((2, 3, 8, 8), 0.5)
    pred = torch.stack([torch.full((3, 8, 8), 0.4), torch.full((3, 8, 8), 0.25)])
    # MSE 0.01 -> 20 dB; MSE 0.0625 -> 10 log10(16) dB
    assert metrics.psnr(pred, target).tolist() == pytest.approx([20.0, 10 * math.log10(16)], abs=1e-4)


def test_ssim_is_one_for_identical_images_and_lower_otherwise():
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert metrics.ssim(x, x).tolist() == pytest.approx([1.0] * 3, abs=1e-5)
    assert (metrics.ssim(x, (x + 0.2).clamp(0, 1)) < 0.99).all()


def test_view_metrics_exclude_the_input_view():
    target = torch.full((2, 4, 3, 8, 8), 0.5)
    pred = target + 0.1  # MSE 0.01 on every view ...
    pred[:, 0] = 0.0  # ... but the input view, which must not count
    out = metrics.view_metrics(pred, target)
    assert out["psnr"].tolist() == pytest.approx([20.0, 20.0], abs=1e-3)
    assert set(out) == {"psnr", "ssim"}  # no LPIPS without a model
    # the white baseline on a mid-grey target: MSE 0.25 -> 6.02 dB; copy-input copies view 0
    assert metrics.view_metrics(metrics.white_baseline(target), target)["psnr"][0] == pytest.approx(
        10 * math.log10(4), abs=1e-3
    )
    copy = metrics.copy_input_baseline(pred[:, 0], 4)
    assert copy.shape == pred.shape and torch.equal(copy[:, 3], pred[:, 0])


def test_view_metrics_with_an_lpips_model():
    class FakeLPIPS(torch.nn.Module):
        def forward(self, a, b):  # inputs in [-1, 1]: check the scaling, return a per-image distance
            assert a.min() >= -1 and a.max() <= 1
            return (a - b).abs().mean(dim=(1, 2, 3), keepdim=True)

    target = torch.zeros(1, 3, 3, 8, 8)
    pred = torch.full_like(target, 0.5)
    pred[:, 0] = 1.0
    out = metrics.view_metrics(pred, target, FakeLPIPS())
    assert out["lpips"].item() == pytest.approx(1.0)  # |0.5*2-1 - (-1)| = 1 on views 1-2; view 0 excluded
    assert "lpips" not in metrics.view_metrics(pred, target, metrics.Unavailable("no weights"))


def test_chamfer_and_fscore_by_hand():
    pred = np.array([[0.0, 0, 0], [1.0, 0, 0]])
    gt = np.array([[0.0, 0, 0], [0.0, 0, 0.5]])
    out = metrics.chamfer_fscore(pred, gt, thresholds=(0.1, 0.6))
    # pred -> gt: 0 and 1 (mean 0.5); gt -> pred: 0 and 0.5 (mean 0.25); CD = (0.5 + 0.25) / 2
    assert out["cd_pred_to_gt"] == pytest.approx(0.5)
    assert out["cd_gt_to_pred"] == pytest.approx(0.25)
    assert out["cd"] == pytest.approx(0.375)
    # tau 0.1: precision 1/2, recall 1/2 -> F 0.5; tau 0.6: precision 1/2, recall 1 -> F 2/3
    assert out["fscore@0.1"] == pytest.approx(0.5)
    assert (out["precision@0.6"], out["recall@0.6"]) == pytest.approx((0.5, 1.0))
    assert out["fscore@0.6"] == pytest.approx(2 / 3)


def test_chamfer_equals_brute_force_nearest_distances():
    # the trees are tuned for speed (sliding midpoint, no compaction); the distances must stay the exact ones,
    # also for points far off the surface and for duplicates, where a tree's search works hardest
    rng = np.random.default_rng(0)
    gt = rng.normal(size=(400, 3))
    gt /= np.linalg.norm(gt, axis=1, keepdims=True)
    pred = np.concatenate([gt[:100] * 1.05, rng.uniform(-4, 4, size=(200, 3)), np.repeat(gt[:1], 50, axis=0)])
    out = metrics.chamfer_fscore(pred, gt, thresholds=(0.05,))
    nearest = np.sqrt(((pred[:, None] - gt[None]) ** 2).sum(-1))
    assert out["cd_pred_to_gt"] == nearest.min(1).mean()
    assert out["cd_gt_to_pred"] == nearest.min(0).mean()
    assert out["precision@0.05"] == (nearest.min(1) <= 0.05).mean()


def test_chamfer_of_an_empty_reconstruction():
    out = metrics.chamfer_fscore(np.zeros((0, 3)), np.ones((5, 3)), thresholds=(0.05,))
    assert math.isnan(out["cd"]) and out["fscore@0.05"] == 0.0 and out["points"] == 0


def test_mean_ci_of_a_known_sample():
    out = metrics.mean_ci([1, 2, 3, 4, 5])
    # t_{0.975, 4} = 2.776445; s = sqrt(2.5); half = t s / sqrt(5)
    half = 2.776445105 * math.sqrt(2.5) / math.sqrt(5)
    assert out["mean"] == 3 and out["n"] == 5
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((3 - half, 3 + half), abs=1e-6)
    with_nan = metrics.mean_ci([1.0, float("nan"), 3.0])
    assert with_nan["n"] == 2 and with_nan["n_nan"] == 1 and with_nan["mean"] == 2
    single = metrics.mean_ci([4.0])
    assert single["mean"] == 4 and math.isnan(single["ci_low"])
    summary = metrics.summarize([{"a": 1.0, "b": 2.0}, {"a": 3.0}], ["a", "b", "c"])
    assert set(summary) == {"a", "b"} and summary["a"]["mean"] == 2 and summary["b"]["n"] == 1


def test_lpips_is_unavailable_without_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    out = metrics.load_lpips_metric()
    assert isinstance(out, metrics.Unavailable)
    assert str(tmp_path) in out.reason
    assert out.to_json()["status"] == "unavailable"


def test_fid_is_unavailable_without_inception_weights(tmp_path, monkeypatch):
    monkeypatch.setenv(metrics.CLEANFID_DIR_ENV, str(tmp_path))
    assert metrics.cleanfid_weights_path() == tmp_path / metrics.CLEANFID_WEIGHTS
    out = metrics.load_inception()
    assert isinstance(out, metrics.Unavailable) and str(tmp_path) in out.reason


def test_inception_features_and_frechet_distance():
    class FakeInception(torch.nn.Module):
        def forward(self, x):  # clean-fid's input: (N, 3, 299, 299) floats in [0, 255]
            assert x.shape[1:] == (3, 299, 299) and x.max() <= 255 and x.max() > 1
            return x.mean(dim=(2, 3)).repeat(1, 2)

    feats = metrics.inception_features(FakeInception(), torch.rand(3, 3, 16, 16), batch_size=2)
    assert feats.shape == (3, 6)
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 3))
    # same covariance, means 1 apart along one axis: FID = |mu_a - mu_b|^2 = 1
    assert metrics.fid_from_features(a, a + np.array([1.0, 0, 0])) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        metrics.fid_from_features(a[:1], a)


def test_surface_points_are_seeded_and_on_the_mesh():
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    a = metrics.sample_surface_points(box, 500, seed=3)
    assert a.shape == (500, 3)
    np.testing.assert_array_equal(a, metrics.sample_surface_points(box, 500, seed=3))
    assert not np.array_equal(a, metrics.sample_surface_points(box, 500, seed=4))
    assert np.allclose(np.abs(a).max(axis=1), 0.5)  # every point on a face of the box


def test_ground_truth_mesh_is_normalised_like_the_renderer(tmp_path):
    mesh = trimesh.creation.box(extents=(4.0, 2.0, 1.0))
    mesh.apply_translation([10.0, -3.0, 2.0])
    mesh.export(tmp_path / "slab.obj")
    gt = metrics.ground_truth_mesh("folder-slab", "folder", str(tmp_path))
    np.testing.assert_allclose(gt.bounds, [[-0.5, -0.25, -0.125], [0.5, 0.25, 0.125]], atol=1e-6)
    with pytest.raises(KeyError, match="folder-missing"):
        metrics.ground_truth_mesh("folder-missing", "folder", str(tmp_path))


def test_depth_points_back_project_into_the_world():
    K = intrinsics(60.0, 8)[None]
    c2w = torch.eye(4)[None]
    c2w[0, :3, 3] = torch.tensor([0.0, 0.0, -2.0])  # camera at z = -2 looking along +z
    depth = torch.full((1, 8, 8), 2.0)
    depth[0, 0, 0] = 0  # background
    points = metrics.depth_points(depth, K, c2w)
    assert points.shape == (63, 3)
    np.testing.assert_allclose(points[:, 2], 0.0, atol=1e-6)  # the plane z = 0 in the world


def test_object_seed_is_deterministic_and_distinct():
    assert metrics.object_seed(0, "a") == metrics.object_seed(0, "a")
    assert len({metrics.object_seed(0, "a"), metrics.object_seed(1, "a"), metrics.object_seed(0, "b")}) == 3
    assert metrics.object_seed(0, "a", "gt_points") != metrics.object_seed(0, "a")


def _sphere_points(radius: float, centre=(0.0, 0.0, 0.0)) -> np.ndarray:
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=radius)
    sphere.apply_translation(centre)
    return metrics.sample_surface_points(sphere, 50_000, seed=0)


def test_occupancy_fills_a_sphere_to_its_volume():
    grid = metrics.occupancy(_sphere_points(0.4), resolution=64, bound=0.6)
    pitch = 1.2 / 64
    # a solid, not a shell: the volume within the half-voxel shell inflation (~7% at r = 0.4)
    assert grid.sum() * pitch**3 == pytest.approx(4 / 3 * math.pi * 0.4**3, rel=0.12)
    assert grid[30:34, 30:34, 30:34].all() and not grid[0, 0, 0]


def test_volume_iou_of_nested_and_disjoint_spheres():
    outer, inner = metrics.occupancy(_sphere_points(0.4)), metrics.occupancy(_sphere_points(0.2))
    assert metrics.volume_iou(outer, outer) == 1.0
    # nested: IoU = inner volume / outer volume = (0.2 / 0.4)^3, up to the shells' inflation
    assert metrics.volume_iou(inner, outer) == pytest.approx(0.125, abs=0.03)
    far = metrics.occupancy(_sphere_points(0.1, centre=(0.45, 0.45, 0.45)))
    assert metrics.volume_iou(inner, far) == 0.0
    assert metrics.volume_iou(np.zeros((4, 4, 4), bool), np.zeros((4, 4, 4), bool)) == 0.0
