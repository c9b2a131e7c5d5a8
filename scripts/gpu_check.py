"""One-command GPU validation: does this project work on this CUDA machine, and how fast?

    make gpu-check                     # = python scripts/gpu_check.py
    python scripts/gpu_check.py --steps 50 --out results/gpu_check.json

Four checks, each recorded in ``results/gpu_check.json`` (written atomically):

0. The paper route: ``scripts/paper_route.py`` on CUDA first (seconds): the ``paper`` preset's
   structure (SVD's VAE latents, CLIP, LGM-big's layout, fp16), tiny, through every stage script.
1. Rasteriser: gsplat's CUDA kernels (``render(..., backend="cuda")``, what every CUDA run uses)
   against the project's pure-PyTorch path on the CPU (``backend="torch"``, what every CPU run
   and every test here uses), on random Gaussians at the gpu-medium resolution: images (rgb,
   alpha, depth) and the gradients of one random linear function of rgb and alpha with respect
   to every Gaussian field. Image tolerances are those of tests/test_splatting.py's CUDA test;
   the gradient tolerance (relative L2 error) was set a priori, not calibrated on a GPU.
2. Training: the gpu-medium preset for ``--steps`` steps in bf16 through the library's
   ``ouroboros3d.training.loop.train`` (Algorithm 1, AdamW, EMA, accelerate), on synthetic discs at
   128² (no rendered data needed): seconds per step, peak CUDA memory, final losses finite.
3. Sampling: one object with the recursive loop (Algorithm 2, G at every step) with the
   gpu-medium sample params and the just-trained EMA weights: seconds, peak CUDA memory.

Exit codes: 0 all checks passed, 1 a check failed (the JSON says which), 2 no CUDA device
(one ``error:`` line; nothing is written).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from ouroboros3d.data.synthetic import shell_gaussians
from ouroboros3d.errors import UserError, guard

FIELDS = ("means", "quats", "scales", "opacities", "colors")
IMAGE_TOLERANCE = {"quantile_999": 1e-3, "mean": 1e-4}  # as tests/test_splatting.py's CUDA test
GRADIENT_TOLERANCE = 1e-2  # relative L2 error per field; a priori


class NoCudaError(UserError):
    """This machine has no usable CUDA device."""


# The checks run on whatever device the tensors are on (tests/test_gpu_check.py runs them on
# the CPU at tiny sizes, so that this script's code is exercised where there is no GPU);
# only main() insists on CUDA.
def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_bytes() -> int | None:
    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None


def gib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**30:.2f} GiB"


def synthetic_dataset(params, size: int) -> list[dict[str, torch.Tensor]]:
    """``size`` objects: a coloured disc per object, moving across the views as the camera turns
    (tests/conftest.py's synthetic_batch), at the preset's resolution and cameras."""
    from ouroboros3d.geometry import cameras

    res, v = params.data.resolution, params.camera.num_views
    az = cameras.default_view_layout(params.camera.orbit_frames, params.camera.view_frames)
    c2w = cameras.orbit_c2w(az, 10.0, params.camera.radius)
    K = cameras.intrinsics(params.camera.fov_deg, res).expand(v, 3, 3).contiguous()
    yy, xx = torch.meshgrid(torch.arange(res), torch.arange(res), indexing="ij")
    items = []
    for i in range(size):
        g = torch.Generator().manual_seed(i)
        radius = res * (0.15 + 0.15 * torch.rand((), generator=g))
        cx = res / 2 - 0.5 + (res / 6) * torch.sin(torch.deg2rad(az.float()))
        disc = (((yy - res / 2 + 0.5) ** 2 + (xx[None] - cx[:, None, None]) ** 2) < radius**2).float()
        alpha = disc[:, None]
        views = alpha * torch.rand(1, 3, 1, 1, generator=g) + (1 - alpha)
        items.append({"views": views, "input_view": views[0], "alpha": alpha, "K": K, "c2w": c2w})
    return items


# --- 1. rasteriser ---------------------------------------------------------------------------------


def check_rasteriser(params, objects: int = 2, gaussians: int = 4096, device: str = "cuda", backend: str = "cuda"):
    """gsplat (``backend`` on ``device``) against the torch path on the CPU."""
    from ouroboros3d.gaussians.container import Gaussians
    from ouroboros3d.gaussians.splatting import render
    from ouroboros3d.geometry import cameras

    size, v = params.data.resolution, params.camera.num_views
    az = cameras.default_view_layout(params.camera.orbit_frames, params.camera.view_frames)
    K = cameras.intrinsics(params.camera.fov_deg, size).expand(v, 3, 3).contiguous()
    c2w = cameras.orbit_c2w(az, 10.0, params.camera.radius)
    cloud = shell_gaussians(objects, gaussians)
    gen = torch.Generator().manual_seed(1)
    # a random linear function of every pixel, so every pixel's gradient counts
    w_rgb = torch.rand(objects, v, 3, size, size, generator=gen)
    w_alpha = torch.rand(objects, v, 1, size, size, generator=gen)

    def run(on: str, how: str):
        leaves = Gaussians(**{f: getattr(cloud, f).to(on).clone().requires_grad_(True) for f in FIELDS})
        t0 = time.perf_counter()
        out = render(leaves, K.to(on), c2w.to(on), size, size, backend=how)
        loss = (out.rgb * w_rgb.to(on)).sum() + (out.alpha * w_alpha.to(on)).sum()
        loss.backward()
        sync()
        images = {k: getattr(out, k).detach().cpu() for k in ("rgb", "alpha", "depth")}
        return images, {f: getattr(leaves, f).grad.cpu() for f in FIELDS}, time.perf_counter() - t0

    cpu_images, cpu_grads, cpu_seconds = run("cpu", "torch")
    _, _, first_cuda_seconds = run(device, backend)  # the first call may JIT-compile gsplat's kernels
    gpu_images, gpu_grads, cuda_seconds = run(device, backend)

    images = {}
    for name in cpu_images:
        diff = (gpu_images[name] - cpu_images[name]).abs().flatten()
        images[name] = {
            "max": float(diff.max()),
            "mean": float(diff.mean()),
            "quantile_999": float(diff.float().quantile(0.999)),
        }
        ok = all(images[name][k] < tol for k, tol in IMAGE_TOLERANCE.items())
        images[name]["ok"] = ok
    grads = {}
    for f in FIELDS:
        a, b = gpu_grads[f].flatten().double(), cpu_grads[f].flatten().double()
        rel = float((a - b).norm() / b.norm().clamp_min(1e-30))
        cos = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
        grads[f] = {"relative_l2_error": rel, "cosine": cos, "ok": rel < GRADIENT_TOLERANCE}
    return {
        "setting": f"{objects} objects x {gaussians} Gaussians x {v} views at {size}²",
        "images": images,
        "gradients": grads,
        "seconds": {"torch_cpu": cpu_seconds, "cuda_first_call": first_cuda_seconds, "cuda": cuda_seconds},
        "tolerances": {"images": IMAGE_TOLERANCE, "gradient_relative_l2": GRADIENT_TOLERANCE},
        "ok": all(r["ok"] for r in images.values()) and all(r["ok"] for r in grads.values()),
    }


# --- 2. training, 3. sampling ---------------------------------------------------------------------


def check_training(params, steps: int, objects: int, mixed_precision: str = "bf16") -> tuple[dict, torch.nn.Module]:
    from ouroboros3d.build import build_model
    from ouroboros3d.training.loop import train

    settings = dataclasses.replace(
        params.train,
        steps=steps,
        mixed_precision=mixed_precision,
        warmup_steps=min(params.train.warmup_steps, max(1, steps // 5)),
        checkpoint_every=steps,  # one checkpoint, at the end (the loop always writes one there)
        log_every=max(1, steps // 10),
        real_share=None,  # synthetic discs: no real scans to draw a share of the batch from
    )
    dataset = synthetic_dataset(params, objects)
    torch.manual_seed(params.seed)
    model = build_model(params)
    marks = [time.perf_counter()]

    def on_step(done: int, values: dict) -> None:  # values are floats already: the GPU has synced
        marks.append(time.perf_counter())

    reset_peak()
    with tempfile.TemporaryDirectory() as tmp:
        summary = train(
            model,
            dataset,
            settings,
            Path(tmp) / "checkpoints",
            Path(tmp) / "log",
            seed=params.seed,
            fingerprint="gpu-check",
            progress=False,
            on_step=on_step,
        )
    peak = peak_bytes()
    step_seconds = [b - a for a, b in itertools.pairwise(marks)]
    # step 1 includes accelerate's set-up and CUDA warm-up, the last one the checkpoint write
    steady = step_seconds[1:-1] or step_seconds
    losses = summary["final_losses"]
    summary.pop("ema").copy_to(model)
    result = {
        "preset": params.preset,
        "steps": summary["steps"],
        "batch_size": settings.batch_size,
        "resolution": params.data.resolution,
        "mixed_precision": settings.mixed_precision,
        "first_step_seconds": step_seconds[0],
        "median_step_seconds": statistics.median(steady),
        "step_seconds": step_seconds,
        "total_seconds": summary["seconds"],
        "peak_cuda_bytes": peak,
        "final_losses": losses,
        "ok": summary["finished"] and all(math.isfinite(v) for v in losses.values()),
    }
    return result, model


def check_sampling(model, params) -> dict:
    from ouroboros3d.sampling import sample, sample_kwargs

    item = synthetic_dataset(params, 1)[0]
    device = next(model.parameters()).device
    sp = params.sample
    model.eval()
    reset_peak()
    sync()
    t0 = time.perf_counter()
    out = sample(
        model,
        item["input_view"][None].to(device),
        item["K"][None].to(device),
        item["c2w"][None].to(device),
        **sample_kwargs(sp, reconstruct="every_step"),
        seeds=[0],
    )
    sync()
    seconds = time.perf_counter() - t0
    return {
        "steps": sp.steps,
        "seconds": seconds,
        "peak_cuda_bytes": peak_bytes(),
        "gaussians": 0 if out.gaussians is None else out.gaussians.num_gaussians,
        "ok": bool(torch.isfinite(out.views).all()) and out.gaussians is not None,
    }


# --- the command ----------------------------------------------------------------------------------


def cuda_device_name() -> str:
    if not torch.cuda.is_available():
        raise NoCudaError(
            f"gpu-check needs a CUDA GPU and torch {torch.__version__} sees none; "
            "run it on a machine with an NVIDIA GPU and a CUDA build of torch"
        )
    return torch.cuda.get_device_name()


def check_paper_route() -> dict:
    """``scripts/paper_route.py`` (the paper preset's structure, tiny, through every stage script)
    on this CUDA machine: whether the route a GPU user takes works, in seconds, before anything long."""
    import subprocess

    script = Path(__file__).resolve().parent / "paper_route.py"
    with tempfile.TemporaryDirectory(prefix="paper-route-") as folder:
        t0 = time.perf_counter()
        run = subprocess.run([sys.executable, str(script), "--out", folder], capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        route = Path(folder) / "route.json"
        report = json.loads(route.read_text()) if route.exists() else {}
    if run.returncode != 0:
        failed = report.get("failed", {})
        tail = failed.get("tail") or (run.stdout + run.stderr)[-2000:]
        return {"ok": False, "error": f"stage {failed.get('stage', '?')} failed: {' '.join(tail.split())[-600:]}"}
    return {"ok": True, "seconds": seconds, "stage_seconds": report["seconds"], "checks": report["checks"]}


def attempt(check, *args):
    """Run one check; an exception fails it (and is printed) instead of ending the run, so the
    JSON always says which checks passed."""
    try:
        return check(*args)
    except Exception as e:
        traceback.print_exc()
        return {"ok": False, "error": f"{type(e).__name__}: {' '.join(str(e).split())}"}


def verdict(name: str, result: dict) -> str:
    what = result.get("summary") or f"{name}: {result.get('error', '')}"
    return f"{what} -> {'ok' if result['ok'] else 'FAILED'}"


@guard
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--steps", type=int, default=50, help="training steps of the gpu-medium preset")
    parser.add_argument("--objects", type=int, default=32, help="synthetic training objects")
    parser.add_argument("--out", type=Path, default=Path("results/gpu_check.json"))
    args = parser.parse_args(argv)
    device = cuda_device_name()  # before any heavy import: refuse fast

    import gsplat

    from ouroboros3d.config import load_params
    from ouroboros3d.files import atomic_write_text

    params = load_params(args.params, preset="gpu-medium")
    report: dict = {
        "device": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gsplat": gsplat.__version__,
    }
    print(
        f"gpu-check on {report['device']} (torch {report['torch']}, CUDA {report['cuda']}, gsplat {gsplat.__version__})"
    )

    report["paper_route"] = pr = attempt(check_paper_route)
    if "error" not in pr:
        pr["summary"] = (
            f"paper route (tiny, every stage script, latent: vae, fp16): {pr['seconds']:.1f} s, "
            f"{pr['checks']['views']} views of {pr['checks']['view_size']}², {pr['checks']['gaussians']} Gaussians"
        )
    print(verdict("paper route", pr))

    report["rasteriser"] = r = attempt(check_rasteriser, params)
    if "error" not in r:
        worst = max(r["gradients"].values(), key=lambda g: g["relative_l2_error"])
        r["summary"] = (
            f"rasteriser ({r['setting']}): rgb |diff| max {r['images']['rgb']['max']:.2e}, worst gradient "
            f"relative error {worst['relative_l2_error']:.2e}; torch on CPU {r['seconds']['torch_cpu']:.2f} s, "
            f"gsplat {r['seconds']['cuda'] * 1e3:.1f} ms (first call {r['seconds']['cuda_first_call']:.1f} s)"
        )
    print(verdict("rasteriser", r))

    trained = attempt(check_training, params, args.steps, args.objects)  # (result, model), or an error dict
    report["training"] = t = trained if isinstance(trained, dict) else trained[0]
    if "error" not in t:
        t["summary"] = (
            f"training {t['preset']}, {t['steps']} steps in {t['mixed_precision']}, "
            f"batch {t['batch_size']} at {t['resolution']}²: "
            f"first step {t['first_step_seconds']:.2f} s, median {t['median_step_seconds']:.3f} s/step, "
            f"peak {gib(t['peak_cuda_bytes'])}, final loss {t['final_losses'].get('loss', math.nan):.4f}"
        )
    print(verdict("training", t))

    if "error" in t:
        s = {"ok": False, "error": "not run: training failed"}
    else:
        s = attempt(check_sampling, trained[1], params)
    report["sampling"] = s
    if "error" not in s:
        s["summary"] = (
            f"sampling one object, {s['steps']} steps, recursive (G every step): {s['seconds']:.2f} s, "
            f"peak {gib(s['peak_cuda_bytes'])}"
        )
    print(verdict("sampling", s))

    report["ok"] = all(report[k]["ok"] for k in ("paper_route", "rasteriser", "training", "sampling"))
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(f"{'all checks passed' if report['ok'] else 'SOME CHECKS FAILED'}; wrote {args.out}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
