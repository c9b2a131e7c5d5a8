"""Rendering throughput: objects per second at 64x64 and 256x256, 8 views, one process.

Times the render stage's per-object path (load + normalise + ray cast + shade + write PNGs,
depth and cameras) on a few train (random_urdfs) and eval (ycb) objects. The stage runs
``data.workers`` such processes in parallel.

    .venv/bin/python benchmarks/bench_render.py [--objects 8] [--resolutions 64 256]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from ouroboros3d.config import CameraParams
from ouroboros3d.data.render_stage import ObjectJob, RenderSettings, render_object
from ouroboros3d.data.sources import RandomURDFSource, YCBSource


def bench(objects, resolution: int, out_dir: str) -> float:
    cam = CameraParams()
    settings = RenderSettings(resolution, cam.radius, cam.fov_deg, cam.orbit_frames, tuple(cam.view_frames))
    start = time.perf_counter()
    for obj in objects:
        row = render_object(ObjectJob(obj, "bench", 15.0, 0.0, settings, out_dir))
        assert row["status"] == "ok", row
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=8, help="objects per source")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 256])
    args = parser.parse_args()
    sources = {
        "random_urdfs": RandomURDFSource().objects()[:: 1000 // args.objects][: args.objects],
        "ycb": YCBSource().objects()[:: max(1, 78 // args.objects)][: args.objects],
    }
    with tempfile.TemporaryDirectory() as out_dir:
        bench(sources["random_urdfs"][:1], 64, out_dir)  # warm-up: imports, embree start-up
        print(f"{'source':<14}{'resolution':>11}{'objects':>9}{'seconds':>9}{'objects/s':>11}")
        for resolution in args.resolutions:
            for name, objects in sources.items():
                seconds = bench(objects, resolution, out_dir)
                rate = len(objects) / seconds
                print(f"{name:<14}{f'{resolution}²':>11}{len(objects):>9}{seconds:>9.2f}{rate:>11.1f}")


if __name__ == "__main__":
    main()
