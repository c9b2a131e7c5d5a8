"""Seconds per guided sampling step: classifier-free guidance as one denoiser pass on a batch of
2B (the library's ``sample``) against two passes of B (how it ran before, issue 18).

    .venv/bin/python benchmarks/bench_guidance.py                  # cpu-small, 2 threads, idle machine
    .venv/bin/python benchmarks/bench_guidance.py --batches 1 4 --json results/benchmarks/guidance.json

For each batch size (1: ``ouroboros3d generate``; 4: the evaluation's batch) it times
``sample`` with the params' sampler and guidance, F alone (``reconstruct="none"``) and the
recursive loop (G at every step), and divides by the steps. "Two passes" wraps the denoiser so
that a 2B batch runs as its two halves, one after the other: the same arithmetic as before.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from bench_ouroboros import timed  # the benchmarks' one timer (run as a script from benchmarks/)

from ouroboros3d.build import build_model
from ouroboros3d.config import load_params
from ouroboros3d.data.synthetic import synthetic_batch
from ouroboros3d.files import atomic_write_text
from ouroboros3d.sampling import sample, sample_kwargs


class TwoPasses(torch.nn.Module):
    """The preconditioned denoiser, with a [conditional; unconditional] batch run as two passes."""

    def __init__(self, denoiser, b: int):
        super().__init__()
        self.denoiser, self.b = denoiser, b

    def forward(self, x, sigma, feedback=None, **cond):
        if x.shape[0] != 2 * self.b:
            return self.denoiser(x, sigma, feedback=feedback, **cond)
        out = []
        for half in (slice(0, self.b), slice(self.b, None)):
            fed = None if feedback is None else {k: m[half] for k, m in feedback.items()}
            out.append(self.denoiser(x[half], sigma, feedback=fed, **{k: c[half] for k, c in cond.items()}))
        return torch.cat(out)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.denoiser, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params(args.params)
    torch.manual_seed(0)
    model = build_model(params).eval()
    batched = model.denoiser
    kwargs = sample_kwargs(params.sample)
    steps = kwargs["steps"]
    rows = []
    for b in args.batches:
        batch = synthetic_batch(params, b, seed=1)
        for reconstruct in ("none", "every_step"):
            row = {"batch": b, "reconstruct": reconstruct, "steps": steps, "guidance": list(kwargs["guidance"])}
            for name, denoiser in (("two_passes", TwoPasses(batched, b)), ("one_pass", batched)):
                model.denoiser = denoiser

                args_ = (model, batch["input_view"], batch["K"], batch["c2w"])
                kw = kwargs | {"reconstruct": reconstruct}

                def run(args_=args_, kw=kw):
                    sample(*args_, **kw)

                row[f"{name}_s_per_step"] = round(timed(run, args.iters) / steps, 4)
            model.denoiser = batched
            row["speedup"] = round(row["two_passes_s_per_step"] / row["one_pass_s_per_step"], 2)
            rows.append(row)
            print(
                f"batch {b}, {'F only' if reconstruct == 'none' else 'G every step'}: two passes "
                f"{row['two_passes_s_per_step']:.3f} s/step, one pass of 2B {row['one_pass_s_per_step']:.3f} s/step "
                f"({row['speedup']:.2f}x)",
                flush=True,
            )
    if args.json:
        atomic_write_text(args.json, json.dumps({"threads": args.threads, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
