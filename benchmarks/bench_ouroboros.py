"""The analogue of the paper's Table 4: what the 3D feedback costs, in training and sampling.

Training step (forward + backward, one batch of the preset):
  (a) multi-view diffusion alone (EDM loss on F),  (b) the reconstructor alone (G on
  ground-truth views),  (c) Ouroboros3D's Algorithm 1 (both passes of F, G on F's prediction).
Sampling one object:
  (a) multi-view diffusion alone,  (b) diffusion then one reconstruction at the end,
  (c) the recursive loop (Algorithm 2).
Also the achieved FLOP/s of a training step against a measured float32 matmul rate.

The paper (A100): training per 1k steps SVD 15 min, LGM 10 min, Ouroboros3D 36 min
(1.44x SVD + LGM); inference SV3D + LGM 24.18 s, Ouroboros3D 25.19 s (+4%).

    python benchmarks/bench_ouroboros.py [--params params.yaml] [--iters 3] [--steps 25]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from ouroboros3d.build import build_model
from ouroboros3d.config import load_params
from ouroboros3d.diffusion import edm
from ouroboros3d.geometry import cameras
from ouroboros3d.sampling import sample


def batch_for(params, batch_size):
    g = torch.Generator().manual_seed(0)
    res, v = params.data.resolution, params.camera.num_views
    az = cameras.default_view_layout(params.camera.orbit_frames, params.camera.view_frames)
    c2w = cameras.orbit_c2w(az, 10.0, params.camera.radius).expand(batch_size, v, 4, 4).contiguous()
    K = cameras.intrinsics(params.camera.fov_deg, res).expand(batch_size, v, 3, 3).contiguous()
    views = torch.rand(batch_size, v, 3, res, res, generator=g)
    alpha = (torch.rand(batch_size, v, 1, res, res, generator=g) > 0.5).float()
    return {"views": views, "input_view": views[:, 0], "alpha": alpha, "K": K, "c2w": c2w}


def timed(fn, iters, warmup=1):
    for _ in range(warmup):  # the first calls pay one-off allocation and kernel-selection costs
        fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_rate(n=1024, iters=5, dtype=torch.float32, warmup=1):
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    seconds = timed(lambda: a @ b, iters, warmup)
    return 2 * n**3 / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: params)")
    args = parser.parse_args()
    params = load_params(args.params)
    torch.manual_seed(0)
    model = build_model(params)
    batch = batch_for(params, params.train.batch_size)
    steps = args.steps or params.sample.steps
    edm_loss = edm.EDMLoss(params.train.p_mean, params.train.p_std)

    def train_diffusion():
        x = model.autoencoder.encode(batch["views"])
        cond = model.condition(batch["input_view"], batch["K"], batch["c2w"])
        loss, _ = edm_loss(model.denoiser, x, generator=torch.Generator().manual_seed(0), **cond, feedback=None)
        loss.mean().backward()

    def train_reconstructor():
        recon = model.reconstruct(batch["views"], batch["K"], batch["c2w"], None)
        torch.nn.functional.mse_loss(recon.rgb, batch["views"]).backward()

    def train_ouroboros():
        model(batch, torch.Generator().manual_seed(0), feedback_prob=params.train.feedback_prob)["loss"].backward()

    def train_ouroboros_both_passes():
        model(batch, torch.Generator().manual_seed(0), feedback_prob=1.0)["loss"].backward()

    one = {k: v[:1] for k, v in batch.items()}
    guidance = params.sample.guidance

    def sampler(reconstruct):
        def run():
            sample(
                model,
                one["input_view"],
                one["K"],
                one["c2w"],
                steps=steps,
                guidance=guidance,
                reconstruct=reconstruct,
                seeds=[0],
            )

        return run

    print(
        f"preset {params.preset}: {params.data.resolution}², {params.camera.num_views} views, "
        f"batch {params.train.batch_size}, feedback maps {model.feedback_maps or 'none'}, "
        f"threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"parameters: F {sum(p.numel() for p in model.denoiser.parameters()) / 1e6:.2f}M, "
        f"G {sum(p.numel() for p in model.reconstructor.parameters()) / 1e6:.2f}M"
    )
    rows = []
    t_a = timed(train_diffusion, args.iters)
    t_b = timed(train_reconstructor, args.iters)
    t_c = timed(train_ouroboros, args.iters)
    t_c2 = timed(train_ouroboros_both_passes, args.iters)
    rows += [
        ("train step", "(a) diffusion alone", t_a),
        ("train step", "(b) reconstructor alone", t_b),
        ("train step", f"(c) Ouroboros3D, p={params.train.feedback_prob:.1f} second pass", t_c),
        ("train step", "(c') Ouroboros3D, second pass always", t_c2),
    ]
    with torch.no_grad():
        s_a = timed(sampler("none"), 1)
        s_b = timed(sampler("final"), 1)
        s_c = timed(sampler("every_step"), 1)
    rows += [
        ("sample 1 object", f"(a) diffusion alone, {steps} steps", s_a),
        ("sample 1 object", "(b) diffusion, then reconstruct once", s_b),
        ("sample 1 object", "(c) recursive loop (Algorithm 2)", s_c),
    ]
    print("\n| what | setting | seconds |\n|---|---|---|")
    for what, setting, sec in rows:
        print(f"| {what} | {setting} | {sec:.3f} |")
    print(f"\ntraining: (c) / ((a) + (b)) = {t_c / (t_a + t_b):.2f}x   (paper: 36 / (15 + 10) = 1.44x)")
    print(f"sampling: (c) / (b) = {s_c / s_b:.2f}x   (paper: 25.19 / 24.18 = 1.04x)")

    with FlopCounterMode(display=False) as counter:
        train_ouroboros_both_passes()
    flops = counter.get_total_flops()
    peak = matmul_rate()
    print(
        f"\ntraining step (both passes): {flops / 1e9:.1f} GFLOP in {t_c2:.2f} s = {flops / t_c2 / 1e9:.1f} GFLOP/s; "
        f"float32 1024² matmul here: {peak / 1e9:.1f} GFLOP/s ({flops / t_c2 / peak:.0%} of it)"
    )


if __name__ == "__main__":
    main()
