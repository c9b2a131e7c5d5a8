"""Objects per second of the training steps and of sampling, fp32 against bf16 autocast.

One run, on an idle machine (another CPU-heavy job makes OpenMP spin-wait and skews fp32
against bf16 several-fold), prints:

- the machine: its bf16 matrix units (``amx_bf16``/``avx512_bf16`` in ``lscpu``), the threads;
- a 2048² matmul in fp32 and bf16: the peak a step's matmuls could reach;
- F's training step (its pretraining objective: EDM loss, backward, AdamW) and G's (on ground-
  truth views), each in fp32 and bf16 at every ``--batches`` size: seconds and objects/s;
- sampling (params ``sample``, the recursive loop with G at every step): objects/s;
- where one bf16 step of F goes (torch.profiler, top ops by self CPU time) and the fraction of
  the bf16 matmul peak that the whole step reaches (its FLOPs counted by torch's FlopCounterMode).

``--json`` also writes the figures to a file (the README's performance section quotes them).

    .venv/bin/python benchmarks/bench_throughput.py                       # cpu-small, 2 threads
    .venv/bin/python benchmarks/bench_throughput.py --batches 2 8 16 --json results/benchmarks/throughput.json

The model's training step is the one :func:`ouroboros3d.training.loop.train` runs (``model(batch,
draws, objective=...)`` under the same autocast accelerate applies); the batch is synthetic
(:func:`ouroboros3d.data.synthetic.synthetic_batch`), which costs what real views cost.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import platform
import subprocess
from pathlib import Path

import torch
from bench_ouroboros import matmul_rate, timed  # the benchmarks' one timer (run as a script from benchmarks/)
from torch.utils.flop_counter import FlopCounterMode

from ouroboros3d.build import build_model
from ouroboros3d.config import load_params
from ouroboros3d.data.synthetic import synthetic_batch
from ouroboros3d.models.denoiser import parameter_summary
from ouroboros3d.sampling import sample, sample_kwargs
from ouroboros3d.training.batches import step_draws

# cpu-small's F as issue 17 measured it (11.2 M parameters, until 2026-12-04): its fp32 step at the
# first --batches size is the "today's" of the issue's 2x target, so a narrower F is timed against it
ISSUE_17_DENOISER = {
    "block_out_channels": (32, 64, 96, 128),
    "num_attention_heads": (1, 2, 3, 4),
    "image_encoder_channels": (16, 32, 64, 128),
}


def issue_17_params(params):
    """``params`` with issue 17's F, or None where that is its F already or the preset is not cpu-small."""
    denoiser = params.model.denoiser
    if params.preset != "cpu-small" or all(getattr(denoiser, k) == v for k, v in ISSUE_17_DENOISER.items()):
        return None
    denoiser = dataclasses.replace(denoiser, **ISSUE_17_DENOISER)
    return dataclasses.replace(params, model=dataclasses.replace(params.model, denoiser=denoiser))


def cpu_matrix_units() -> list[str]:
    try:
        flags = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return []
    return sorted({f for f in flags.split() if f.startswith("amx") or f == "avx512_bf16"})


def autocast(precision: str):
    return torch.autocast("cpu", torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def training_step(model, params, objective: str, batch_size: int, precision: str, variant: str | None = None):
    """One optimiser step of ``objective`` at ``batch_size`` objects, as train() runs it;
    ``variant`` "channels_last" or "compile" times that change to F."""
    settings = params.pretrain.denoiser if objective == "denoiser" else params.pretrain.reconstructor
    batch = synthetic_batch(params, batch_size, seed=1)
    counter = [0]
    if variant == "channels_last":
        model = copy.deepcopy(model)
        for module in model.denoiser.net.modules():  # the 2D convolutions: the temporal layers are 3D/5D
            if isinstance(module, torch.nn.Conv2d):
                module.to(memory_format=torch.channels_last)
    elif variant == "compile":
        model = copy.deepcopy(model)
        model.denoiser.net = torch.compile(model.denoiser.net)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-6)

    def step():
        counter[0] += 1
        draws = step_draws(params.seed, counter[0], range(batch_size))
        with autocast(precision):
            losses = model(
                batch, draws, objective=objective, cond_dropout=settings.cond_dropout, p_mean=settings.p_mean,
                p_std=settings.p_std,
            )  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--preset", default=None, help="a preset of the params file (default: its own)")
    parser.add_argument("--batches", type=int, nargs="+", default=[2, 8, 16], help="objects per training step")
    parser.add_argument("--sample-batch", type=int, default=4, help="objects sampled together")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument(
        "--bf16", choices=("auto", "yes", "no"), default="auto",
        help="time bf16 too: auto = where the CPU has bf16 units (without them a bf16 matmul is ~100x slower)",
    )  # fmt: skip
    parser.add_argument("--compile", action="store_true", help="also time F's step with torch.compile (inductor)")
    parser.add_argument("--channels-last", action="store_true", help="also time F's step in channels_last memory")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    params = load_params(args.params, preset=args.preset)
    torch.manual_seed(0)
    model = build_model(params).train()
    out: dict = {
        "cpu": platform.processor() or platform.machine(),
        "matrix_units": cpu_matrix_units(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "preset": params.preset,
        "resolution": params.data.resolution,
    }
    print(f"preset {params.preset} at {params.data.resolution}², {out['threads']} threads, torch {torch.__version__}")
    print(f"bf16 matrix units: {', '.join(out['matrix_units']) or 'none (bf16 will be slower than fp32)'}")
    bf16 = args.bf16 == "yes" or (args.bf16 == "auto" and bool(out["matrix_units"]))
    precisions = ("fp32", "bf16") if bf16 else ("fp32",)
    fast = precisions[-1]
    peak = {p: matmul_rate(2048, 5, torch.float32 if p == "fp32" else torch.bfloat16, 2) for p in precisions}
    if not bf16:  # one small bf16 matmul says what bf16 would cost here
        peak_bf16 = matmul_rate(512, 2, torch.bfloat16, 2)
        out["bf16_matmul_gflops_without_units"] = round(peak_bf16 / 1e9, 2)
        print(f"bf16 not timed further: a 512² bf16 matmul runs at {peak_bf16 / 1e9:.1f} GFLOP/s on this CPU")
    out["matmul_gflops"] = {p: round(v / 1e9, 1) for p, v in peak.items()}
    print("2048² matmul: " + ", ".join(f"{p} {v / 1e9:.0f} GFLOP/s" for p, v in peak.items()))

    out["training"] = []
    for objective in ("denoiser", "reconstructor"):
        for b in args.batches:
            row = {"objective": objective, "batch": b}
            for precision in precisions:
                seconds = timed(training_step(model, params, objective, b, precision), args.iters)
                row[precision] = {"seconds": round(seconds, 3), "objects_per_s": round(b / seconds, 2)}
            out["training"].append(row)
            print(
                f"train {objective:>13} batch {b:>2}: "
                + ", ".join(f"{p} {row[p]['seconds']:.2f} s = {row[p]['objects_per_s']:.1f} obj/s" for p in precisions)
            )
    base = next(r for r in out["training"] if r["objective"] == "denoiser")
    best = max((r for r in out["training"] if r["objective"] == "denoiser"), key=lambda r: r[fast]["objects_per_s"])
    best_rate = best[fast]["objects_per_s"]
    best_name = f"{fast}, batch {best['batch']}"
    for variant in ("channels_last", "compile"):
        if not getattr(args, variant):
            continue
        step = training_step(model, params, "denoiser", best["batch"], fast, variant)
        seconds = timed(step, args.iters, warmup=2)  # compile: the first calls trace and build
        rate = best["batch"] / seconds
        out["training"].append({"objective": f"denoiser+{variant}", "batch": best["batch"],
                                fast: {"seconds": round(seconds, 3), "objects_per_s": round(rate, 2)}})  # fmt: skip
        print(f"train denoiser+{variant} batch {best['batch']:>2}: {fast} {seconds:.2f} s = {rate:.1f} obj/s")
        if rate > best_rate:
            best_rate, best_name = rate, f"{fast}, batch {best['batch']}, {variant}"
    out["denoiser_speedup"] = {
        "baseline": f"fp32, batch {base['batch']}",
        "best": best_name,
        "factor": round(best_rate / base["fp32"]["objects_per_s"], 2),
    }
    print(
        f"F's training throughput: {out['denoiser_speedup']['factor']:.2f}x "
        f"({out['denoiser_speedup']['best']} against {out['denoiser_speedup']['baseline']}, the same F)"
    )
    reference = issue_17_params(params)
    if reference is not None:
        torch.manual_seed(0)
        reference_model = build_model(reference).train()
        seconds = timed(training_step(reference_model, reference, "denoiser", base["batch"], "fp32"), args.iters)
        rate = base["batch"] / seconds
        parts = parameter_summary(reference_model.denoiser.net)
        out["issue_17_denoiser"] = {
            # F's own parameters, as its pretraining saves them (no feedback networks)
            "parameters": parts["total"] - sum(n for part, n in parts.items() if part.startswith("feedback_")),
            "batch": base["batch"],
            "fp32": {"seconds": round(seconds, 3), "objects_per_s": round(rate, 2)},
            "factor": round(best_rate / rate, 2),
        }
        del reference_model
        print(
            f"issue 17's F ({out['issue_17_denoiser']['parameters'] / 1e6:.1f} M parameters), fp32 batch "
            f"{base['batch']}: {seconds:.2f} s = {rate:.1f} obj/s; this F ({best_name}) runs "
            f"{out['issue_17_denoiser']['factor']:.2f}x its objects per second"
        )

    model.eval()
    batch = synthetic_batch(params, args.sample_batch, seed=2)
    out["sampling"] = {"batch": args.sample_batch, "steps": params.sample.steps}
    for precision in precisions:
        kwargs = sample_kwargs(params.sample, mixed_precision="no" if precision == "fp32" else "bf16")

        def run(kwargs=kwargs):
            sample(model, batch["input_view"], batch["K"], batch["c2w"], **kwargs)

        seconds = timed(run, max(1, args.iters - 1))
        out["sampling"][precision] = {
            "seconds": round(seconds, 3),
            "objects_per_s": round(args.sample_batch / seconds, 2),
        }
    print(
        f"sampling ({params.sample.steps} steps, G every step), batch {args.sample_batch}: "
        + ", ".join(f"{p} {out['sampling'][p]['objects_per_s']:.2f} obj/s" for p in precisions)
    )

    # where one bf16 step of F at the best batch goes, and how near the matmul peak it runs
    model.train()
    step = training_step(model, params, "denoiser", best["batch"], fast)
    step()
    with FlopCounterMode(display=False) as flops:
        step()
    seconds = best[fast]["seconds"]
    out["denoiser_step_flops"] = flops.get_total_flops()
    out["fraction_of_peak"] = {"precision": fast, "fraction": round(flops.get_total_flops() / seconds / peak[fast], 4)}
    print(
        f"F's {fast} step at batch {best['batch']}: {flops.get_total_flops() / 1e9:.1f} GFLOP in {seconds:.2f} s = "
        f"{flops.get_total_flops() / seconds / 1e9:.0f} GFLOP/s, "
        f"{100 * out['fraction_of_peak']['fraction']:.1f}% of the {fast} matmul peak"
    )
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    out["profile"] = [
        {"op": e.key, "share": round(e.self_cpu_time_total / total, 4), "calls": e.count} for e in events[:15]
    ]
    print(f"where the step's time goes (self CPU time, top 15 of {len(events)} ops):")
    for row in out["profile"]:
        print(f"  {100 * row['share']:5.1f}%  {row['calls']:>5} calls  {row['op']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
