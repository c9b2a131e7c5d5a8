"""The dataset figure: a few objects' views, their depth and their CCMs, side by side.

For each shown object three rows over its V views: the RGB renders, the z-depth (viridis,
near = dark, scaled per object over its foreground, background white) and the CCM shown as
RGB (x, y, z -> red, green, blue; background = the CCM background value, black by default).
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure  # no pyplot: renders with Agg and leaves a notebook's backend alone

from . import layout

__all__ = ["dataset_figure", "pick_figure_objects"]


def pick_figure_objects(object_ids: list[str], count: int = 3) -> list[str]:
    """``count`` ids spread evenly over the sorted list (first, middle, last for 3)."""
    ids = sorted(object_ids)
    if len(ids) <= count:
        return ids
    return [ids[i] for i in np.linspace(0, len(ids) - 1, count).round().astype(int)]


def _depth_image(depth: np.ndarray) -> np.ndarray:
    fg = depth > 0
    rgb = np.ones((*depth.shape, 3))
    if fg.any():
        lo, hi = depth[fg].min(), depth[fg].max()
        rgb[fg] = matplotlib.colormaps["viridis"]((depth[fg] - lo) / max(hi - lo, 1e-6))[:, :3]
    return rgb


def dataset_figure(
    renders_split_dir: str | Path, ccm_split_dir: str | Path, object_ids: list[str], out_path: str | Path
) -> None:
    """Write the figure for ``object_ids`` of one split to ``out_path`` (PNG, reproducible bytes)."""
    if not object_ids:
        raise ValueError("dataset_figure needs at least one object")
    panels = []
    for object_id in object_ids:
        obj_dir = Path(renders_split_dir) / object_id
        cams = layout.read_cameras(obj_dir)
        rgb, _ = layout.read_views(obj_dir, len(cams["c2w"]))
        depth = np.load(obj_dir / layout.DEPTH_FILE)
        ccm = np.load(Path(ccm_split_dir) / object_id / layout.CCM_FILE).astype(np.float32)
        panels.append((object_id, rgb, depth, ccm))
    num_views = max(len(p[1]) for p in panels)
    rows = 3 * len(panels)
    fig = Figure(figsize=(1.1 * num_views, 1.1 * rows))
    axes = fig.subplots(rows, num_views, squeeze=False)
    for k, (object_id, rgb, depth, ccm) in enumerate(panels):
        for v in range(num_views):
            images = (rgb[v], _depth_image(depth[v]), np.clip(ccm[v].transpose(1, 2, 0), 0, 1))
            for r, image in enumerate(images):
                ax = axes[3 * k + r, v]
                ax.imshow(image, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if v == 0:
                    ax.set_ylabel(
                        f"{object_id}\n{('RGB', 'depth', 'CCM')[r]}" if r == 0 else ("depth", "CCM")[r - 1], fontsize=5
                    )
                if k == 0 and r == 0:
                    ax.set_title("input" if v == 0 else f"view {v}", fontsize=6)
    fig.tight_layout(pad=0.2)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    layout.atomic_write_bytes(out_path, buffer.getvalue())
