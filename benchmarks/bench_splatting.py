"""Time the Gaussian rasteriser: forward and forward+backward at a few sizes.

    .venv/bin/python benchmarks/bench_splatting.py            # default sizes, torch backend
    .venv/bin/python benchmarks/bench_splatting.py --backend cuda --device cuda

The Gaussians look like a reconstructor's output: a shell of surface Gaussians around the
origin (radius 0.35) with scales spread over the reconstructor's default range, opacities
0.5-1, seen by the paper's 8 orbit views. Times are the median of ``--reps`` runs after one
warm-up; the load average is printed because other processes skew CPU timings.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

import torch

from ouroboros3d.data.synthetic import shell_gaussians
from ouroboros3d.gaussians.container import Gaussians
from ouroboros3d.gaussians.splatting import render
from ouroboros3d.geometry.cameras import default_view_layout, intrinsics, orbit_c2w

DEFAULT_SIZES = ("1x8x2000@64", "2x8x4096@64", "2x8x4096@128", "1x8x16384@128")


def parse_size(text: str) -> tuple[int, int, int, int]:
    counts, size = text.split("@")
    b, v, n = (int(x) for x in counts.split("x"))
    return b, v, n, int(size)


def bench(size: str, backend: str, device: str, reps: int) -> str:
    b, v, n, px = parse_size(size)
    g = shell_gaussians(b, n).to(device)
    K = intrinsics(39.6, px).expand(v, 3, 3).to(device)
    c2w = orbit_c2w(default_view_layout()[:v] if v <= 8 else torch.arange(v) * (360.0 / v), 10.0, 2.2).to(device)
    fields = ("means", "quats", "scales", "opacities", "colors")

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    forward, both = [], []
    for rep in range(reps + 1):
        with torch.no_grad():
            sync()
            t0 = time.perf_counter()
            render(g, K, c2w, px, px, backend=backend)
            sync()
            t1 = time.perf_counter()
        leaves = Gaussians(**{f: getattr(g, f).clone().requires_grad_(True) for f in fields})
        sync()
        t2 = time.perf_counter()
        out = render(leaves, K, c2w, px, px, backend=backend)
        (out.rgb.square().mean() + out.depth.mean()).backward()
        sync()
        t3 = time.perf_counter()
        if rep:  # the first run is a warm-up
            forward.append(t1 - t0)
            both.append(t3 - t2)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return (
        f"B={b} V={v} N={n:>6} {px:>4}²  forward {statistics.median(forward):7.3f} s   "
        f"forward+backward {statistics.median(both):7.3f} s   (process peak RSS so far {peak_gb:.2f} GB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), help="BxVxN@pixels, e.g. 2x8x4096@64")
    parser.add_argument("--backend", default="torch", choices=["torch", "cuda", "auto"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, backend {args.backend} on {args.device}, {torch.get_num_threads()} threads, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    for size in args.sizes:
        print(bench(size, args.backend, args.device, args.reps), flush=True)


if __name__ == "__main__":
    main()
