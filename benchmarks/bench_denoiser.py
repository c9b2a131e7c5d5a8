"""Time the denoiser: forward, and one training step's forward + backward, with feedback.

    .venv/bin/python benchmarks/bench_denoiser.py                  # cpu-small, 2 objects x 8 views
    .venv/bin/python benchmarks/bench_denoiser.py --preset gpu-medium --device cuda

Prints parameter counts per part and the median of ``--iters`` timed runs after warm-up runs
(the first calls pay one-off allocation and kernel-selection costs).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import ouroboros3d  # noqa: F401  (makes diffusers importable on CPU-only torch)
from ouroboros3d.build import denoiser_kwargs
from ouroboros3d.config import load_params
from ouroboros3d.models.denoiser import MultiViewDenoiser, parameter_summary


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--preset", default="cpu-small", help="a preset of the params file")
    parser.add_argument("--batch", type=int, default=2, help="objects per batch")
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-feedback", action="store_true", help="run without the feedback path")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    kwargs = denoiser_kwargs(load_params(args.params, preset=args.preset))
    if kwargs["image_encoder"] == "clip":  # the paper's CLIP needs local weights: time the UNet with a given token
        kwargs["image_encoder"] = "none"
    model = MultiViewDenoiser(**kwargs).to(device)
    config = model.config
    b, v, c, s = args.batch, args.views, config.latent_channels, config.sample_size
    img = s * config.feedback_unshuffle  # the feedback maps' (image) resolution
    x = torch.randn(b, v, c, s, s, device=device)
    c_noise = torch.randn(b, device=device)
    cond = {
        "cond_latent": torch.randn(b, c, s, s, device=device),
        "plucker": torch.randn(b, v, 6, s, s, device=device),
        "feedback": None
        if args.no_feedback
        else {m: torch.rand(b, v, 3, img, img, device=device) for m in ("ccm", "rgb")},
    }
    image = torch.rand(b, 3, img, img, device=device)

    def embedding() -> torch.Tensor:
        if model.image_encoder is None:
            return torch.randn(b, 1, config.cross_attention_dim, device=device)
        return model.encode_image(image)

    def forward() -> None:
        with torch.no_grad():
            model(x, c_noise, cond_embedding=embedding(), **cond)

    def train_step() -> None:
        model.zero_grad(set_to_none=True)
        model(x, c_noise, cond_embedding=embedding(), **cond).square().mean().backward()

    def timed(fn) -> float:
        for _ in range(args.warmup):
            fn()
        times = []
        for _ in range(args.iters):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    print(
        f"preset {args.preset}: {b} objects x {v} views at {s}² (feedback maps {img}²), device {device}, "
        f"threads {torch.get_num_threads()}, feedback {'off' if args.no_feedback else 'ccm+rgb'}"
    )
    for part, count in parameter_summary(model).items():
        print(f"  params {part:>14}: {count:>13,}")
    print(f"  forward            : {timed(forward):.3f} s (median of {args.iters})")
    print(f"  forward + backward : {timed(train_step):.3f} s (median of {args.iters})")


if __name__ == "__main__":
    main()
