"""The ccm stage and the PyTorch dataset over the documented folder layout."""

import shutil

import numpy as np
import pytest
import torch
import trimesh
from conftest import load_script
from PIL import Image

from ouroboros3d.config import params_from_dict
from ouroboros3d.data import MultiViewDataset, layout, render_dataset, write_ccms
from ouroboros3d.data.dataset import ITEM_KEYS, collate
from ouroboros3d.geometry.cameras import plucker_rays
from ouroboros3d.geometry.ccm import CCMNormalization, depth_to_ccm

RES, VIEWS = 16, 8


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """A tiny train split (3 boxes and a sphere, 16x16) rendered by the stage, plus its CCMs."""
    root = tmp_path_factory.mktemp("data")
    (root / "meshes").mkdir()
    for k in range(3):
        trimesh.creation.box(extents=(1.0, 0.4 + 0.2 * k, 0.3)).export(root / "meshes" / f"box{k}.obj")
    trimesh.creation.icosphere(subdivisions=2).export(root / "meshes" / "ball.ply")
    params = params_from_dict(
        {
            "data": {
                "resolution": RES,
                "workers": 1,
                "min_objects": 1,
                "folder": str(root / "meshes"),
                "train": {"source": "folder", "elevation_deg": [-5.0, 30.0]},
            }
        }
    )
    render_dataset(params, root / "renders", splits=("train",), progress=False)
    return root


def test_ccm_stage_writes_float16_ccms_and_a_figure(rendered, tmp_path):
    ccm_script = load_script("ccm")
    params_file = tmp_path / "params.yaml"
    params_file.write_text("{}\n")
    args = ["--params", str(params_file), "--renders", str(rendered / "renders"), "--out", str(rendered / "ccm")]
    assert ccm_script.main([*args, "--figures", str(tmp_path / "fig"), "--splits", "train", "--no-progress"]) == 0
    ccm_file = rendered / "ccm/train/folder-box0/ccm.npy"
    ccm = np.load(ccm_file)
    assert ccm.dtype == np.float16 and ccm.shape == (VIEWS, 3, RES, RES)
    assert 0.0 <= ccm.min() and ccm.max() <= 1.0
    cams = layout.read_cameras(rendered / "renders/train/folder-box0")
    depth = torch.from_numpy(np.load(rendered / "renders/train/folder-box0/depth.npy"))
    expected = depth_to_ccm(depth, cams["K"], cams["c2w"], CCMNormalization())
    np.testing.assert_allclose(ccm.astype(np.float32), expected.numpy(), atol=5e-4)
    figure = Image.open(tmp_path / "fig" / "dataset_train.png")
    assert figure.size[0] > 200 and figure.size[1] > 200
    # eval was never rendered: asking for it fails with a clear message, not a traceback
    assert ccm_script.main([*args, "--figures", str(tmp_path / "fig"), "--splits", "eval", "--no-progress"]) == 2


def test_dataset_items_have_the_documented_shapes_and_ranges(rendered):
    write_ccms(rendered / "renders", rendered / "ccm", splits=("train",), progress=False)
    data = MultiViewDataset(rendered / "renders/train", rendered / "ccm/train")
    assert data.object_ids == ["folder-ball", "folder-box0", "folder-box1", "folder-box2"] and len(data) == 4
    item = data[1]
    shapes = {
        "input_view": (3, RES, RES),
        "views": (VIEWS, 3, RES, RES),
        "alpha": (VIEWS, 1, RES, RES),
        "depth": (VIEWS, RES, RES),
        "ccm": (VIEWS, 3, RES, RES),
        "K": (VIEWS, 3, 3),
        "c2w": (VIEWS, 4, 4),
        "plucker": (VIEWS, 6, RES, RES),
    }
    for key, shape in shapes.items():
        assert item[key].shape == shape and item[key].dtype == torch.float32, key
    assert item["object_id"] == "folder-box0"
    for key in ("input_view", "views", "alpha", "ccm"):
        assert 0.0 <= item[key].min() and item[key].max() <= 1.0, key
    assert torch.equal(item["input_view"], item["views"][0])
    fg = item["alpha"][:, 0] > 0.5
    assert set(item["alpha"].unique().tolist()) == {0.0, 1.0}
    assert torch.equal(fg, item["depth"] > 0) and torch.all(item["views"].permute(0, 2, 3, 1)[~fg] == 1.0)
    assert torch.all(item["ccm"].permute(0, 2, 3, 1)[~fg] == 0.0)
    torch.testing.assert_close(item["plucker"], plucker_rays(item["K"], item["c2w"], RES, RES))
    batch = next(iter(torch.utils.data.DataLoader(data, batch_size=2)))
    assert batch["views"].shape == (2, VIEWS, 3, RES, RES) and batch["object_id"] == ["folder-ball", "folder-box0"]


def test_dataset_opens_renders_without_a_ccm_stage_and_rejects_empty_folders(rendered, tmp_path):
    from_depth = MultiViewDataset(rendered / "renders/train")[0]
    write_ccms(rendered / "renders", rendered / "ccm", splits=("train",), progress=False)
    from_file = MultiViewDataset(rendered / "renders/train", rendered / "ccm/train")[0]
    torch.testing.assert_close(from_depth["ccm"], from_file["ccm"], atol=5e-4, rtol=0)
    with pytest.raises(FileNotFoundError, match="no rendered objects"):
        MultiViewDataset(tmp_path)


def test_an_item_of_some_keys_reads_and_computes_only_what_they_need(rendered, tmp_path):
    write_ccms(rendered / "renders", rendered / "ccm", splits=("train",), progress=False)
    shutil.copytree(rendered / "renders/train", tmp_path / "train")
    data = MultiViewDataset(tmp_path / "train", rendered / "ccm/train")
    whole = data[1]
    assert list(whole) == list(ITEM_KEYS)  # the documented keys, in their order
    (tmp_path / "train/folder-box0" / layout.DEPTH_FILE).unlink()  # training's keys do not need it
    keys = ("views", "alpha", "K", "c2w", "input_view")
    part = data.item(1, keys)
    assert list(part) == [k for k in ITEM_KEYS if k in keys]
    assert all(torch.equal(part[k], whole[k]) for k in keys)
    rays = data.item(1, ("plucker",))  # the rays need the cameras and the image size alone
    assert list(rays) == ["plucker"] and torch.equal(rays["plucker"], whole["plucker"])
    assert torch.equal(data.item(1, ("ccm",))["ccm"], whole["ccm"])  # the CCM stage's file
    with pytest.raises(layout.CorruptObjectError, match="folder-box0"):
        data[1]  # the whole item reads the depth


def test_collate_stacks_the_keys_it_is_given():
    items = [{"a": torch.full((2, 3), float(i)), "b": torch.tensor([i]), "name": str(i)} for i in range(3)]
    batch = collate(items, ("b", "a"))
    assert list(batch) == ["b", "a"]
    assert torch.equal(batch["a"], torch.stack([it["a"] for it in items]))
    assert torch.equal(batch["b"], torch.tensor([[0], [1], [2]]))
