"""The model card: the ``README.md`` that :meth:`Ouroboros3DPipeline.save_pretrained
<ouroboros3d.inference.pipeline.Ouroboros3DPipeline.save_pretrained>` writes into a model folder,
generated from the params and what the train stage knew of the run.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import Params

__all__ = ["model_card"]


def _count(module) -> int:
    return sum(t.numel() for t in module.trainable_state_dict().values())


def _table(rows: list[tuple[str, str]]) -> str:
    return "\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:.4g}"


def _uses_svd(params: Params) -> bool:
    """Whether the model holds or needs SVD's weights: its VAE, its CLIP, or its UNet as the start."""
    init = params.model.denoiser_init
    svd_unet = bool(init) and (Path(init) / "config.json").is_file()  # a diffusers UNet folder, not ours
    return params.model.latent == "vae" or params.model.denoiser.image_encoder == "clip" or svd_unet


def model_card(pipe, training: Mapping[str, Any] | None = None) -> str:
    """The README.md of a saved model ``pipe`` (an Ouroboros3DPipeline): generated from its params and what
    the train stage knew (``training``: see ``save_pretrained``)."""
    p, t = pipe.params, dict(training or {})
    name = t.get("run", "model")
    svd = _uses_svd(p)
    d, r = p.model.denoiser, p.model.reconstructor
    front = [
        "---",
        f"license: {'other' if svd else 'mit'}",
        "library_name: ouroboros3d",
        "pipeline_tag: image-to-3d",
        "tags: [ouroboros3d, diffusers, image-to-3d, multi-view-diffusion, gaussian-splatting]",
        "---",
    ]
    maps = ", ".join(p.feedback_maps) if p.feedback else "none"
    lines = [
        f"# Ouroboros3D: `{name}` (preset `{p.preset}`)",
        "",
        "Image-to-3D by 3D-aware recursive diffusion, a replication of Ouroboros3D (Wen et al.): a multi-view "
        "diffusion model F (SVD's spatio-temporal UNet architecture) and an LGM-style Gaussian reconstructor G, "
        "with the reconstruction's renders fed back to F at every denoising step. Saved by "
        "`Ouroboros3DPipeline.save_pretrained` of the `ouroboros3d` package.",
        "",
        "## The model",
        "",
        _table(
            [
                (
                    "views",
                    f"{p.camera.num_views} at {p.data.resolution}² (orbit frames {list(p.camera.view_frames)}, "
                    f"radius {p.camera.radius:g}, fov {p.camera.fov_deg:g}°); view 0 is the input",
                ),
                ("diffusion space", "pixels" if p.model.latent == "pixel" else "SVD's VAE latents"),
                (
                    "`denoiser/` (F)",
                    f"MultiViewDenoiser, {_count(pipe.denoiser):,} saved parameters, "
                    f"blocks {list(d.block_out_channels)}, image encoder `{d.image_encoder}`",
                ),
                (
                    "`reconstructor/` (G)",
                    f"Reconstructor, {_count(pipe.reconstructor):,} parameters, "
                    f"{r.image_size}² inputs of views {list(p.model.recon_views)}, "
                    f"{pipe.reconstructor.num_gaussians:,} Gaussians",
                ),
                ("3D feedback maps", maps),
                ("joint training of F and G", str(p.joint)),
            ]
        ),
        "",
    ]
    frozen = []
    if d.image_encoder == "clip":
        frozen.append(
            f"- CLIP image encoder (frozen): loaded from `{d.image_encoder_path}` (the denoiser's config.json)."
        )
    if pipe.vae is not None:
        frozen.append(f"- SVD's VAE (frozen): loaded from `{p.model.vae_path}` (params.json `model.vae_path`).")
    if frozen:
        lines += ["Parts not saved here are referenced by local path and must exist there to load the model:", ""]
        lines += [*frozen, ""]

    tr = p.data.train
    lines += [
        "## Data",
        "",
        f"Rendered by this repository's render stage: train source `{tr.source}` (at most {tr.max_objects} objects"
        + (f", plus {tr.real_objects} real objects along {tr.real_orbits} orbits each" if tr.real_objects else "")
        + (f", plus the textured `libero` scans of {tr.textured_objects} shapes" if tr.textured_objects else "")
        + f"), elevations {tr.elevation_deg[0]:g}° to {tr.elevation_deg[1]:g}°; validation `{p.data.val.source}`, "
        f"evaluation `{p.data.eval.source}` (never trained on)."
        + (f" The run trained on {t['objects']} objects." if "objects" in t else ""),
        "Each object's licence is recorded in the render stage's `data/renders/manifest.csv` (`licence` column).",
        "",
        "## Training",
        "",
    ]
    if t:
        s = dict(t.get("settings") or {})
        rows = [("run", f"`{name}`"), ("objective", str(t.get("objective", "joint")))]
        if "steps" in t:
            rows.append(
                (
                    "steps",
                    f"{t['steps']:,}"
                    + (f" of {s['steps']:,}" if "steps" in s else "")
                    + ("" if t.get("finished", True) else " (not finished)"),
                )
            )
        for key in ("batch_size", "lr", "ema_decay"):
            if key in s:
                rows.append((key, _number(s[key])))
        if "seconds" in t:
            rows.append(("time", f"{t['seconds']:.0f} s"))
        rows.append(("seed", str(p.seed)))
        init = {k: v for k, v in (t.get("init") or {}).items() if v not in (None, "none")}
        rows.append(("started from", ", ".join(f"{k}: `{v}`" for k, v in init.items()) or "random initialisation"))
        lines += [_table(rows), "", "The saved weights are the EMA of the training weights.", ""]
    else:
        lines += ["Not recorded: this model was saved outside the train stage.", ""]

    metrics = t.get("metrics") or {}
    if metrics:
        source = t.get("metrics_file", "the run's metrics.json")
        lines += [
            "## Metrics",
            "",
            f"The last values logged by the run (`{source}`):",
            "",
            "| metric | value |",
            "|---|---|",
        ]
        for group in ("train", "val", "run"):
            for key, value in (metrics.get(group) or {}).items():
                lines.append(f"| {group}/{key} | {_number(value)} |")
        lines.append("")

    lines += [
        "## Use",
        "",
        "```python",
        "from ouroboros3d.inference.generate import generate",
        "from ouroboros3d.inference.pipeline import Ouroboros3DPipeline",
        "",
        'pipe = Ouroboros3DPipeline.from_pretrained("path/to/this/folder")',
        f'result = generate("my_object.png", pipe, steps={p.sample.steps}, seed=0)  # result.views, result.gaussians',
        "```",
        "",
        "or `ouroboros3d generate my_object.png --checkpoint path/to/this/folder`.",
        "",
        "## Licence",
        "",
        "The code that trained and runs this model is MIT-licensed (the `ouroboros3d` package).",
    ]
    if svd:
        lines.append(
            "This model uses Stable Video Diffusion's weights (stabilityai/stable-video-diffusion-img2vid-xt: "
            "its UNet as initialisation, its VAE and/or CLIP image encoder), which are subject to Stability AI's "
            "licence for that model (accepted on its Hugging Face page before downloading); that licence applies "
            "to this model too."
        )
    else:
        lines.append("Its weights were trained from scratch by this repository (no pretrained weights): MIT as well.")
    lines.append("The training objects keep their own licences (see Data).")
    return "\n".join(front + lines) + "\n"
