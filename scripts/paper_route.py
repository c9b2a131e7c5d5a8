"""The paper route, tiny: every structural choice of the ``paper`` preset through the stage scripts.

    python scripts/paper_route.py --out /tmp/route     # CPU: about a minute; CUDA: seconds

A researcher with GPUs sets ``preset: paper`` and runs ``dvc repro``. This script runs that
route end to end on params that keep the preset's structure and shrink only widths,
resolution and steps: SVD's temporal VAE latents (``latent: vae``, downscale 8), the frozen CLIP
image token, an SVD-layout UNet folder as ``denoiser_init``, LGM-big's 6-level attention layout,
``residual: false`` and ``sigma_data: 1``, the paper's EDM noise levels, guidance [1, 2.5] and
sigma_max 700. It builds the tiny local SVD-layout folders the preset points at
(``pretrained/stable-video-diffusion-img2vid-xt/{vae,image_encoder,unet}``), then, in ``--out``:

1. ``experiments/render.py`` and ``experiments/ccm.py`` on a handful of objects at 64²;
2. ``experiments/train.py --pretrain denoiser`` and ``--pretrain reconstructor`` (validation at
   every step), then the joint fine-tune from them (validation at its end);
3. ``experiments/evaluate.py`` on the eval objects, and ``ouroboros3d generate`` on one image;
4. checks: the saved model loads with ``Ouroboros3DPipeline.from_pretrained``; the views and
   Gaussians have the paper's shapes (8 views of the input's size, a .ply of Gaussians).

Two departures from the preset, both forced by the machine, not by the size: LPIPS weight 0
(its ImageNet backbone cannot be downloaded offline) and, on a CPU, fp32 for the preset's fp16
(accelerate has no fp16 autocast on CPU). ``route.json`` in ``--out`` records each stage's
seconds and the checked shapes. Exit 0 when every stage ran and every check held; otherwise the
failing stage's output tail and exit 1. ``make gpu-check`` runs it first on CUDA.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ouroboros3d.config import _deep_merge  # noqa: E402
from ouroboros3d.errors import ArgumentParser  # noqa: E402

SVD = Path("pretrained/stable-video-diffusion-img2vid-xt")  # the paper preset's own paths

# only widths, resolution and steps: every structural key of the preset is left as it is
SHRINK = {
    "data": {
        "resolution": 64,  # latents of 8² after the VAE's 8x
        "min_objects": 1,
        "train": {"max_objects": 3, "real_objects": 1, "real_orbits": 2},
        "val": {"max_objects": 2},
        "eval": {"max_objects": 2},
    },
    "model": {
        "denoiser": {
            "block_out_channels": [32, 32, 32, 32],
            "num_attention_heads": [1, 1, 1, 1],
            "cross_attention_dim": 16,  # = the tiny CLIP's projection
            "addition_time_embed_dim": 4,
            "camera_frequencies": 2,
            "camera_embed_dim": 8,
            "image_encoder_channels": [8, 8, 8, 8],
            "feedback_blocks_per_scale": 1,
        },
        "reconstructor": {
            "image_size": 64,
            "down_channels": [8, 8, 16, 16, 16, 16],
            "up_channels": [16, 16, 16, 8, 8],
            "attention_head_dim": 8,
        },
    },
    "train": {"steps": 2, "batch_size": 1, "checkpoint_every": 1, "log_every": 1, "warmup_steps": 1,
              "lpips_weight": 0.0},
    "sample": {"steps": 2},
    "evaluation": {"gt_points": 2000, "step_objects": 1, "batch_size": 2},
}  # fmt: skip
PRETRAIN = {
    "pretrain": {
        part: {"steps": 2, "batch_size": 1, "checkpoint_every": 1, "log_every": 1, "warmup_steps": 1,
               "validate_every": 1}
        for part in ("denoiser", "reconstructor")
    }
}  # fmt: skip


def route_params(cuda: bool) -> dict:
    """params.yaml with ``preset: paper`` and the preset shrunk (:data:`SHRINK`)."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["preset"] = "paper"
    paper = _deep_merge(raw["presets"]["paper"], SHRINK)
    paper["train"]["mixed_precision"] = paper["train"]["mixed_precision"] if cuda else "no"
    raw["presets"]["paper"] = paper
    return _deep_merge(raw, PRETRAIN)  # the preset leaves pretraining's own block to the top level


def build_svd_folders(out: Path, params_path: Path) -> None:
    """Tiny SVD-layout folders where the preset looks: a CLIP image encoder, a temporal VAE
    (downscale 8) and a UNet of F's architecture, each saved as diffusers/transformers save them."""
    from diffusers import AutoencoderKLTemporalDecoder
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(5)
    clip = CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        image_size=32, patch_size=16, projection_dim=16,
    )  # fmt: skip
    CLIPVisionModelWithProjection(clip).save_pretrained(out / SVD / "image_encoder")
    AutoencoderKLTemporalDecoder(
        down_block_types=("DownEncoderBlock2D",) * 4, block_out_channels=(32,) * 4, latent_channels=4
    ).save_pretrained(out / SVD / "vae")

    from ouroboros3d.build import build_model
    from ouroboros3d.config import load_params

    cwd = Path.cwd()
    os.chdir(out)  # the params name their folders relative to the project
    try:
        params = load_params(params_path)
        build_model(params).denoiser.net.unet.save_pretrained(SVD / "unet")
    finally:
        os.chdir(cwd)


def stages(image: str, cuda: bool) -> list[tuple[str, list[str]]]:
    py, exp = sys.executable, str(ROOT / "experiments")
    splits = ["--splits", "train", "val", "eval"]
    return [
        ("render", [py, f"{exp}/render.py", "--params", "params.yaml", *splits, "--no-progress"]),
        ("ccm", [py, f"{exp}/ccm.py", "--params", "params.yaml", *splits, "--no-progress"]),
        ("pretrain_denoiser", [py, f"{exp}/train.py", "--params", "params.yaml", "--pretrain", "denoiser"]),
        ("pretrain_reconstructor", [py, f"{exp}/train.py", "--params", "params.yaml", "--pretrain", "reconstructor"]),
        ("train", [py, f"{exp}/train.py", "--params", "params.yaml", "--variant", "main", "--init", "models/pretrain"]),
        ("evaluate", [py, f"{exp}/evaluate.py", "--params", "params.yaml", "--variant", "main", "--no-progress"]),
        ("generate", [py, "-m", "ouroboros3d.inference.cli", "generate", image, "--checkpoint", "models/main", "--out",
                      "generated", "--steps", "2", "--device", "cuda" if cuda else "cpu", "--quiet"]),
    ]  # fmt: skip


def check_outputs(out: Path, params: dict) -> dict:
    """The saved model loads; its views and Gaussians have the paper's shapes."""
    from PIL import Image
    from plyfile import PlyData

    from ouroboros3d.inference.pipeline import Ouroboros3DPipeline

    views, size = len(params["camera"]["view_frames"]), params["presets"]["paper"]["data"]["resolution"]
    cwd = Path.cwd()
    os.chdir(out)  # the model folder names SVD's frozen VAE and CLIP by their project paths
    try:
        pipe = Ouroboros3DPipeline.from_pretrained("models/main")
    finally:
        os.chdir(cwd)
    assert pipe.params.model.latent == "vae" and pipe.params.model.denoiser.image_encoder == "clip"
    assert pipe.model.autoencoder.downscale == 8, pipe.model.autoencoder.downscale
    record = next((out / "generated").rglob("generation.json"))
    view_files = sorted(record.parent.glob("view_*.png"))
    sizes = {Image.open(p).size for p in view_files}
    assert len(view_files) == views and sizes == {(size, size)}, (len(view_files), sizes)
    gaussians = PlyData.read(str(record.parent / "gaussians.ply"))["vertex"].count
    assert gaussians > 0
    metrics = json.loads((out / "results" / "eval" / "main" / "metrics.json").read_text())
    return {
        "views": len(view_files),
        "view_size": size,
        "gaussians": gaussians,
        "eval_objects": metrics["objects"],
        "eval_psnr": {k: metrics["summary"][f"{k}_psnr"]["mean"] for k in ("mv", "3d")},  # untrained: a few dB
    }


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="an empty or new folder to run the route in")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    params = route_params(cuda)
    (out / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    t0 = time.perf_counter()
    build_svd_folders(out, out / "params.yaml")
    report: dict = {"device": "cuda" if cuda else "cpu", "seconds": {"svd_folders": round(time.perf_counter() - t0, 1)}}
    env = os.environ | {"PYTHONPATH": str(ROOT), "DVC_NO_ANALYTICS": "1"}
    image = str(out / "data" / "renders" / "eval")  # generate takes the first eval object's input view
    for name, cmd in stages(image, cuda):
        if name == "generate":
            cmd[4] = str(next(Path(image).rglob("rgb_00.png")))
        t0 = time.perf_counter()
        run = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True)
        report["seconds"][name] = round(time.perf_counter() - t0, 1)
        if run.returncode != 0:
            report["failed"] = {"stage": name, "returncode": run.returncode, "tail": (run.stdout + run.stderr)[-3000:]}
            (out / "route.json").write_text(json.dumps(report, indent=2))
            print(
                f"paper route: stage {name} failed (exit {run.returncode}):\n{report['failed']['tail']}",
                file=sys.stderr,
            )
            return 1
        print(f"paper route: {name} ok ({report['seconds'][name]} s)", flush=True)
    report["checks"] = check_outputs(out, params)
    (out / "route.json").write_text(json.dumps(report, indent=2))
    print(f"paper route: every stage ran; {report['checks']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
