"""Memory and time per preset: parameter counts, the training state they imply, measured peaks.

    python benchmarks/memory.py                           # every preset; measures what this machine can
    python benchmarks/memory.py --presets cpu-small       # one preset
    python benchmarks/memory.py --no-measure              # counts and byte arithmetic only (seconds)

For every preset the model is built on the ``meta`` device (shapes, no storage: the paper
preset's 3.1 B parameters cost nothing here) by ``ouroboros3d.build.build_model`` itself.
That function loads SVD's VAE and CLIP image encoder from local folders for the paper preset;
here they are built from SVD-xt's published configs instead (:data:`SVD_VAE`,
:data:`SVD_CLIP`): the same architectures, so the same parameter counts, without weights.

Static training memory follows from the counts and from how ``ouroboros3d/training/loop.py``
trains (see :data:`ASSUMPTIONS`). What cannot be computed from counts, activations, is
measured: one training step and one sample of the preset, each in a fresh subprocess so that
each peak is its own. On CUDA: ``torch.cuda.max_memory_allocated`` for every preset. On a CPU
machine only ``cpu-small`` runs (peak RSS of the process); the other presets' activations are
"not measured" (there is no estimate of them here).

Prints markdown tables and writes ``results/benchmarks/memory.json`` (atomically).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

from ouroboros3d.build import build_model
from ouroboros3d.config import Params, load_params
from ouroboros3d.data.synthetic import synthetic_batch
from ouroboros3d.files import atomic_write_text

PRESETS = ("cpu-small", "gpu-medium", "paper")
DEFAULT_OUT = Path("results/benchmarks/memory.json")

# stabilityai/stable-video-diffusion-img2vid-xt, vae/config.json: AutoencoderKLTemporalDecoder
SVD_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    sample_size=768,
    scaling_factor=0.18215,
)
# ... image_encoder/config.json: CLIPVisionModelWithProjection, OpenCLIP ViT-H/14 (projection 1024)
SVD_CLIP = dict(
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=16,
    patch_size=14,
    image_size=224,
    projection_dim=1024,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
)

ZERO_GPUS = 8  # the paper's 8 A100s
ASSUMPTIONS = [
    "training.py trains with accelerate's native AMP (Accelerator(mixed_precision=train.mixed_precision)): "
    "the parameters stay fp32 and are the master weights; autocast runs matmuls/convs in bf16/fp16. "
    "So weights 4 B x all parameters (frozen parts too: nothing casts them).",
    "gradients: 4 B x trainable parameters (a gradient has its parameter's dtype, fp32).",
    "AdamW: 8 B x trainable (exp_avg + exp_avg_sq in fp32; the optimizer gets requires_grad parameters only).",
    "EMA: 4 B x trainable (training.EMA keeps fp32 clones of the requires_grad parameters).",
    "autocast copies (estimate): <= 2 B x trainable with bf16/fp16: autocast caches the half-precision "
    "casts of leaf parameters that require grad for the forward pass; 0 with mixed_precision 'no'.",
    f"ZeRO-2 on {ZERO_GPUS} GPUs, per GPU, paper preset only (estimate; ZeRO paper, Rajbhandari et al. 2020, K = 12): "
    f"2 B x all (bf16 module) + (2 + 12) B x trainable / {ZERO_GPUS} (bf16 gradient and fp32 master + "
    "2 moments, sharded) + 4 B x trainable (a full fp32 EMA on every rank; the loop's EMA clones the module's "
    "parameters, which DeepSpeed makes bf16, and a bf16 EMA at decay 0.9999 would drop most updates).",
    "measured step: two steps of training.py's loop body (AdamW, EMA, autocast, clip) on a synthetic "
    "batch of train.batch_size objects at data.resolution with the second (feedback) pass forced "
    "(feedback_prob = 1, the worst case); the peak covers both (the second step also holds the first "
    "step's gradients during its forward, as the loop does); times are per step, the first includes warm-up.",
    "measured sample: one object, Algorithm 2 (reconstruct every step) with the preset's sample params, "
    "fp32 as evaluate.py samples. LPIPS (paper preset: lpips_weight 1) is left out of the step.",
    "SVD's VAE and CLIP are built from SVD-xt's configs (SVD_VAE, SVD_CLIP here) with random weights: "
    "the counts follow from those configs, no weights are downloaded.",
]


# --- the model, without weights ------------------------------------------------------------


@contextlib.contextmanager
def svd_parts_from_configs():
    """Make ``build_model`` build SVD's VAE and CLIP from their configs instead of loading them.

    Yields a folder to put in the params' ``vae_path``/``image_encoder_path``: build_model
    checks that they are local folders before it calls ``from_pretrained``.
    """
    from diffusers import AutoencoderKLTemporalDecoder
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    def vae(*_, **__):
        return AutoencoderKLTemporalDecoder(**SVD_VAE)

    def clip(*_, **__):
        return CLIPVisionModelWithProjection(CLIPVisionConfig(**SVD_CLIP))

    with (
        tempfile.TemporaryDirectory() as folder,
        mock.patch.object(AutoencoderKLTemporalDecoder, "from_pretrained", vae),
        mock.patch.object(CLIPVisionModelWithProjection, "from_pretrained", clip),
    ):
        yield folder


def build(params: Params, device: str | torch.device = "meta"):
    """The preset's full model (build_model) on ``device``; ``meta`` allocates nothing."""
    with svd_parts_from_configs() as folder:
        m = params.model
        local = dataclasses.replace(
            m, vae_path=folder, denoiser=dataclasses.replace(m.denoiser, image_encoder_path=folder)
        )
        with torch.device(device):
            return build_model(dataclasses.replace(params, model=local))


def _count(module: torch.nn.Module | None, trainable: bool | None = None) -> int:
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters() if trainable is None or p.requires_grad == trainable)


def parameter_counts(model) -> dict[str, int]:
    """Parameters per part, and trainable (requires_grad: what AdamW and the EMA get) vs frozen."""
    net = model.denoiser.net
    feedback = {f"feedback_{name}": _count(module) for name, module in net.feedback_networks.items()}
    return {
        "unet": _count(net.unet),
        "camera_embedding": _count(net.camera),
        "image_encoder": _count(net.image_encoder),
        **feedback,
        "feedback_total": sum(feedback.values()),
        "reconstructor": _count(model.reconstructor),
        "autoencoder": _count(model.autoencoder),
        "total": _count(model),
        "trainable": _count(model, trainable=True),
        "frozen": _count(model, trainable=False),
        "frozen_image_encoder": _count(net.image_encoder, trainable=False),
        "trainable_autoencoder": _count(model.autoencoder, trainable=True),
    }


def static_bytes(counts: dict[str, int], mixed_precision: str) -> dict[str, int]:
    """Persistent training state, bytes (see ASSUMPTIONS)."""
    total, trainable = counts["total"], counts["trainable"]
    out = {"weights": 4 * total, "gradients": 4 * trainable, "adamw": 8 * trainable, "ema": 4 * trainable}
    out["static_total"] = sum(out.values())
    out["autocast_copies_estimate"] = 0 if mixed_precision == "no" else 2 * trainable
    out["zero2_per_gpu_estimate"] = 2 * total + (2 + 12) * trainable // ZERO_GPUS + 4 * trainable
    return out


# --- measurement (one subprocess per preset and part) ------------------------------------------


class Peak:
    """Peak memory of a block: CUDA allocator peak, or the process's peak RSS (ru_maxrss)."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
        else:
            import psutil

            self.before = psutil.Process().memory_info().rss
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            # the process's high-water mark: it covers imports and the build too, which are far
            # below the step's peak; `before` says where the block started
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def result(self) -> dict:
        kind = "cuda_max_memory_allocated" if self.cuda else "peak_rss"
        return {"kind": kind, "peak_bytes": self.peak, "before_bytes": self.before}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure_step(params: Params, device: str, steps: int = 2) -> dict:
    from accelerate import Accelerator

    from ouroboros3d.model import LossWeights
    from ouroboros3d.training.state import EMA

    settings = params.train
    model = build(params, device)
    batch = {k: t.to(device) for k, t in synthetic_batch(params, settings.batch_size).items()}
    accelerator = Accelerator(cpu=not device.startswith("cuda"), mixed_precision=settings.mixed_precision)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=settings.lr, weight_decay=settings.weight_decay
    )
    ema = EMA(model, settings.ema_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    weights = LossWeights(settings.recon_weight, settings.alpha_weight, 0.0)
    model.train()
    seconds = []
    with Peak(device) as peak:
        for step in range(steps):  # training.py's loop body
            t0 = time.perf_counter()
            with accelerator.autocast():
                losses = model(
                    batch,
                    torch.Generator().manual_seed(step),
                    objective="joint",
                    feedback_prob=1.0,
                    cond_dropout=settings.cond_dropout,
                    p_mean=settings.p_mean,
                    p_std=settings.p_std,
                    weights=weights,
                )
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(losses["loss"])
            accelerator.clip_grad_norm_(model.parameters(), settings.grad_clip)
            optimizer.step()
            ema.update(accelerator.unwrap_model(model))
            _sync(device)
            seconds.append(time.perf_counter() - t0)
    return peak.result() | {"seconds": seconds, "batch_size": settings.batch_size, "loss": float(losses["loss"])}


def measure_sample(params: Params, device: str) -> dict:
    from ouroboros3d.sampling import sample, sample_kwargs

    model = build(params, device).eval()
    one = {k: t.to(device) for k, t in synthetic_batch(params, 1).items()}
    sp = params.sample
    with Peak(device) as peak:
        t0 = time.perf_counter()
        sample(
            model,
            one["input_view"],
            one["K"],
            one["c2w"],
            **sample_kwargs(sp, reconstruct="every_step"),
            seeds=[0],
        )
        _sync(device)
        seconds = time.perf_counter() - t0
    return peak.result() | {"seconds": [seconds], "sampling_steps": sp.steps}


def measure_in_subprocess(params_path: str, preset: str, part: str, device: str, timeout: float) -> dict:
    """One measurement in a fresh interpreter: its peak is not the previous measurement's."""
    cmd = [sys.executable, __file__, "--params", params_path, "--measure", preset, part, "--device", device]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.strip().splitlines()
        return {"error": tail[-1] if tail else f"exit code {proc.returncode}"}
    return json.loads(lines[-1])


# --- report --------------------------------------------------------------------------------------


def human_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n / 2**10:.0f} KiB"


def millions(n: int) -> str:
    return f"{n / 1e6:,.1f} M" if n else "0"


def measured_cell(m: dict | str | None) -> str:
    if not isinstance(m, dict):
        return m or "not measured"
    if "error" in m:
        return f"failed: {m['error']}"
    what = "peak RSS" if m["kind"] == "peak_rss" else "CUDA peak"
    times = " / ".join(f"{s:.2f}" for s in m["seconds"])
    return f"{what} {human_bytes(m['peak_bytes'])} (from {human_bytes(m['before_bytes'])}); {times} s"


def markdown(report: dict) -> str:
    rows = report["presets"]
    lines = [
        "| preset | F: UNet + cameras | image encoder | feedback nets (ccm + rgb) | G | VAE | trainable | frozen |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        c = r["parameters"]
        enc = millions(c["image_encoder"]) + (" (frozen)" if c["frozen_image_encoder"] else "")
        lines.append(
            f"| {name} | {millions(c['unet'] + c['camera_embedding'])} | {enc} | {millions(c['feedback_total'])} "
            f"| {millions(c['reconstructor'])} | {millions(c['autoencoder'])} | {millions(c['trainable'])} "
            f"| {millions(c['frozen'])} |"
        )
    lines += [
        "",
        "| preset | train precision | weights | gradients | AdamW | EMA | static total "
        f"| autocast copies (estimate) | ZeRO-2 x{ZERO_GPUS}, per GPU (estimate) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        b = r["bytes"]
        lines.append(
            f"| {name} | {r['train_precision']} | {human_bytes(b['weights'])} | {human_bytes(b['gradients'])} "
            f"| {human_bytes(b['adamw'])} | {human_bytes(b['ema'])} | **{human_bytes(b['static_total'])}** "
            f"| {human_bytes(b['autocast_copies_estimate']) if b['autocast_copies_estimate'] else '0'} "
            f"| {human_bytes(b['zero2_per_gpu_estimate']) if name == 'paper' else '-'} |"
        )
    lines += [
        "",
        "| preset | measured on | training steps 1-2: peak; s per step | one sample: peak; s |",
        "|---|---|---|---|",
    ]
    for name, r in rows.items():
        m = r["measured"]
        lines.append(f"| {name} | {m['device']} | {measured_cell(m['step'])} | {measured_cell(m['sample'])} |")
    notes = [f"- {a}" for a in report["assumptions"]]
    for name, r in rows.items():
        c = r["parameters"]
        if c["trainable_autoencoder"]:
            saved = human_bytes(16 * c["trainable_autoencoder"])
            notes.append(
                f"- {name}: SVD's VAE ({millions(c['trainable_autoencoder'])}) is trainable as build_model "
                f"returns it (nothing sets requires_grad=False), so AdamW and the EMA cover it; freezing it, "
                f"as SVD fine-tuning does, would save {saved} of gradients + AdamW + EMA."
            )
    return "\n".join(lines) + "\n\nAssumptions:\n" + "\n".join(notes) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-measure", action="store_true", help="counts and byte arithmetic only")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per measurement subprocess")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--measure", nargs=2, metavar=("PRESET", "PART"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.measure:  # the subprocess: one measurement, one JSON line
        preset, part = args.measure
        params = load_params(args.params, preset=preset)
        torch.manual_seed(0)
        result = (measure_step if part == "step" else measure_sample)(params, args.device)
        print(json.dumps(result))
        return 0

    cuda = args.device.startswith("cuda")
    report = {
        "machine": {
            "device": torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores)",
            "torch": torch.__version__,
            "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(),
            "load_average": os.getloadavg()[0],
        },
        "assumptions": ASSUMPTIONS,
        "presets": {},
    }
    for preset in args.presets:
        params = load_params(args.params, preset=preset)
        counts = parameter_counts(build(params, "meta"))
        precision = params.train.mixed_precision
        measured: dict = {"device": "-", "step": "not measured", "sample": "not measured"}
        if args.no_measure:
            pass
        elif cuda or preset == "cpu-small":
            measured["device"] = report["machine"]["device"]
            for part in ("step", "sample"):
                print(f"measuring {preset}: one {part} on {args.device} ...", file=sys.stderr, flush=True)
                measured[part] = measure_in_subprocess(args.params, preset, part, args.device, args.timeout)
        else:
            measured |= {"step": "not measured (CPU machine)", "sample": "not measured (CPU machine)"}
        report["presets"][preset] = {
            "resolution": params.data.resolution,
            "views": params.camera.num_views,
            "batch_size": params.train.batch_size,
            "train_precision": precision,
            "parameters": counts,
            "bytes": static_bytes(counts, precision),
            "measured": measured,
        }
    text = markdown(report)
    print(text)
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
