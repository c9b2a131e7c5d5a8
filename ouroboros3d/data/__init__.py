"""Datasets: real 3D objects rendered on the CPU, their CCMs, and a PyTorch loader.

Two DVC stages build the data (``dvc.yaml``):

* ``render`` (``experiments/render.py``, :func:`render_dataset`): objects from the split's
  source (:mod:`.sources`) are normalised to the unit box, +Z up (:mod:`.mesh`) and
  ray-cast from the split's orbit cameras (:mod:`.render`, :mod:`.render_stage`).
* ``ccm`` (``experiments/ccm.py``, :func:`write_ccms`): a CCM per object from its depth and
  cameras with the global ``params.ccm`` normalisation, and a figure per split.

Views: ``V = len(camera.view_frames)`` frames of a ``camera.orbit_frames``-frame orbit, at one
elevation per object drawn from the split's ``elevation_deg`` range and an azimuth offset drawn
from [0, 360), both from a hash of (seed, object id); view 0 is the input view.

On-disk layout (``V`` views, ``H = W = data.resolution``)::

    data/renders/
      manifest.csv                 one row per object and split: object_id, split, source,
                                   licence, status (ok|skipped), skip_reason, faces,
                                   elevation_deg, azimuth_offset_deg
      train/<object_id>/           (and eval/<object_id>/), only objects rendered ok
        rgb_00.png .. rgb_XX.png   RGB uint8, object over white; view 00 is the input view
        alpha_00.png ..            L uint8, 255 on the object, 0 on the background
        depth.npy                  (V, H, W) float32 z-depth along the camera axis, 0 = background
        cameras.json               K (V,3,3) and c2w (V,4,4) (OpenCV camera, world +Z up),
                                   elevation_deg, azimuth_deg (V), azimuth_offset_deg, radius,
                                   fov_deg, orbit_frames, view_frames, resolution/height/width,
                                   object_id, source, licence, faces, render_key
    data/ccm/
      train/<object_id>/ccm.npy    (V, 3, H, W) float16 in [0, 1], ccm = scale * xyz + offset
      eval/<object_id>/ccm.npy
    results/figures/dataset_train.png, dataset_eval.png

Object ids are ``<source>-<name>`` (e.g. ``random_urdfs-042``, ``ycb-025_mug``), so ids of
different sources never collide. :class:`MultiViewDataset` reads a split folder of this
layout (also one you render yourself; the CCM is computed from depth when absent).
The figure code (:mod:`.previews`, matplotlib) is not imported here, to keep loaders light.
"""

from .ccm_stage import object_ccm, write_ccms
from .dataset import MultiViewDataset
from .mesh import albedo_lookup, normalize_to_unit_box
from .render_stage import (
    SPLITS,
    DatasetTooSmallError,
    RenderSettings,
    draw_view_angles,
    merge_shards,
    object_cameras,
    read_manifest,
    render_dataset,
    render_object,
)
from .render import DEFAULT_LIGHTS, LightRig, RenderedViews, render_views, require_embree
from .sources import MeshObject, SourceUnavailableError, hash_color, make_source, register_source

__all__ = [
    "DEFAULT_LIGHTS",
    "SPLITS",
    "DatasetTooSmallError",
    "LightRig",
    "MeshObject",
    "MultiViewDataset",
    "RenderSettings",
    "RenderedViews",
    "SourceUnavailableError",
    "albedo_lookup",
    "draw_view_angles",
    "hash_color",
    "make_source",
    "merge_shards",
    "normalize_to_unit_box",
    "object_cameras",
    "object_ccm",
    "read_manifest",
    "register_source",
    "render_dataset",
    "render_object",
    "render_views",
    "require_embree",
    "write_ccms",
]
