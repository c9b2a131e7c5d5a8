"""A trained Ouroboros3D saved the way the diffusers ecosystem expects: :class:`Ouroboros3DPipeline`.

A model folder (what the train stage writes to ``models/<variant>/``)::

    model_index.json        diffusers' pipeline index: the class of each component folder
    params.json             the resolved params the model was trained with (sampling, cameras, ...)
    README.md               the model card: data, training, metrics of the run, licence
    denoiser/               F, MultiViewDenoiser: config.json + diffusion_pytorch_model.safetensors
    reconstructor/          G, Reconstructor: config.json + diffusion_pytorch_model.safetensors

Only trainable weights are saved. Frozen parts loaded from local folders are referenced by
path and loaded from it again: the paper preset's CLIP image encoder by the denoiser's
``config.json`` (``image_encoder_path``) and a frozen VAE by ``params.json``
(``model.vae_path``; ``model_index.json`` then has ``"vae": [null, null]``). A pixel-space
model has no VAE at all.

Loading (:meth:`Ouroboros3DPipeline.from_pretrained`) is local and offline, and strict: the
components' configs must agree with params.json and their weights must fit exactly and be
finite (no NaN or inf: a diverged run's weights would sample black views); every
failure is a one-line :class:`~ouroboros3d.errors.GenerationError`::

    pipe = Ouroboros3DPipeline.from_pretrained("models/main")
    pipe.model, pipe.params            # the Ouroboros3D (eval mode) and its Params
    result = ouroboros3d.inference.generate.generate("mug.png", pipe, steps=25, seed=0)
    pipe.save_pretrained("models/copy")

(Image-to-3D is :func:`ouroboros3d.inference.generate.generate`, not the pipeline's ``__call__``: this
module, which the train stage imports, stays clear of the generation code.)
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import diffusers
from diffusers import DiffusionPipeline

from ..build import assemble_model, denoiser_config, reconstructor_kwargs
from ..config import Params
from ..errors import GenerationError, one_line
from ..files import CONFIG_NAME, WEIGHTS_NAME, atomic_write_text, check_finite
from ..models.denoiser import MultiViewDenoiser
from ..models.reconstructor import Reconstructor, resolve_config
from .model_folder import CARD_FILE, HINT, INDEX_FILE, PARAMS_FILE, check_device, read_checkpoint_params, read_json

if TYPE_CHECKING:
    from ..model import Ouroboros3D

__all__ = ["COMPONENTS", "Ouroboros3DPipeline", "model_card"]

# the components always saved, by folder name
COMPONENTS: dict[str, type] = {"denoiser": MultiViewDenoiser, "reconstructor": Reconstructor}


class Ouroboros3DPipeline(DiffusionPipeline):
    """Ouroboros3D for image-to-3D: F (``denoiser``), G (``reconstructor``), SVD's VAE (``vae``,
    None in pixel space) and the ``params`` they were trained with.

    ``model`` is the :class:`~ouroboros3d.model.Ouroboros3D` of these components (what
    sampling, evaluation and :func:`ouroboros3d.inference.generate.generate` run; give ``generate`` the
    pipeline to generate many images with one load).
    """

    _optional_components: ClassVar[list[str]] = ["vae"]

    def __init__(
        self, denoiser: MultiViewDenoiser, reconstructor: Reconstructor, vae=None, params: Params | None = None
    ):
        super().__init__()
        if params is None:
            raise TypeError("Ouroboros3DPipeline needs the params its model was trained with")
        if (vae is None) != (params.model.latent == "pixel"):
            raise ValueError(
                f"model.latent is {params.model.latent!r}: " + ("no VAE" if vae is None else "a VAE given")
            )
        from ..models.autoencoder import PixelAutoencoder, VAEAutoencoder

        self.register_modules(denoiser=denoiser, reconstructor=reconstructor, vae=vae)
        self.params = params
        self.model = assemble_model(
            params, PixelAutoencoder() if vae is None else VAEAutoencoder(vae), denoiser, reconstructor
        )

    @classmethod
    def from_model(cls, model: Ouroboros3D, params: Params) -> Ouroboros3DPipeline:
        """The pipeline of a model built by :func:`ouroboros3d.build.build_model` (``params``)."""
        return cls(model.denoiser.net, model.reconstructor, getattr(model.autoencoder, "vae", None), params)

    # --- saving -------------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | Path, *, training: Mapping[str, Any] | None = None) -> Path:
        """Write the model folder (layout in the module docstring); returns it.

        ``training``: what the train stage knows of the run, for the model card (keys such as
        ``run``, ``objective``, ``steps``, ``seconds``, ``finished``, ``objects``, ``init``,
        ``settings``, ``metrics`` (its metrics.json) and ``metrics_file``). ``model_index.json``
        is written last: a folder that has one is complete.
        """
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / INDEX_FILE).unlink(missing_ok=True)
        index: dict[str, Any] = {"_class_name": type(self).__name__, "_diffusers_version": diffusers.__version__}
        for name in COMPONENTS:
            getattr(self, name).save_pretrained(folder / name)
            index[name] = list(self.config[name])
        index["vae"] = [None, None]  # SVD's VAE is frozen (autoencoder.VAEAutoencoder): referenced, not saved
        params_json = json.dumps(dataclasses.asdict(self.params), indent=2, sort_keys=True)
        atomic_write_text(folder / PARAMS_FILE, params_json)
        atomic_write_text(folder / CARD_FILE, model_card(self, training))
        atomic_write_text(folder / INDEX_FILE, json.dumps(index, indent=2, sort_keys=True) + "\n")
        return folder

    # --- loading ------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, device: str = "cpu") -> Ouroboros3DPipeline:
        """The pipeline saved in the LOCAL folder ``pretrained_model_name_or_path``, on ``device``, in eval mode.

        The components are built from their ``config.json`` (which must agree with params.json)
        and their weights loaded strictly; frozen parts come from the local folders the configs
        name. Never touches a hub.
        """
        device = check_device(device)
        folder, params = read_checkpoint_params(pretrained_model_name_or_path)
        index = read_json(folder / INDEX_FILE)
        _check_index(folder, index, params)
        _check_configs(folder, params)
        try:  # the VAE first: the order build_model builds the parts in
            vae = _load_vae(params)
        except Exception as e:  # a missing SVD folder, an unreadable file
            raise GenerationError(f"cannot load the VAE of {folder}: {one_line(e)}") from None
        parts = {}
        for name, part in COMPONENTS.items():
            try:
                parts[name] = part.from_pretrained(folder / name)
            except ValueError as e:  # weights that do not fit (the message names the keys)
                raise GenerationError(one_line(e)) from None
            except Exception as e:  # an unreadable file, a missing CLIP folder
                raise GenerationError(f"cannot load {folder / name}: {one_line(e)}") from None
        _check_frozen_finite(folder, parts, vae)
        pipe = cls(parts["denoiser"], parts["reconstructor"], vae, params)
        pipe.register_to_config(_name_or_path=str(folder))
        pipe.model.to(device).eval()
        return pipe


def _check_frozen_finite(folder: Path, parts: dict[str, Any], vae) -> None:
    """The parts loaded from elsewhere (SVD's VAE, the CLIP image encoder) hold finite weights too;
    the saved weights were checked as they were read (:meth:`~ouroboros3d.files.PretrainedMixin.from_pretrained`)."""
    frozen = [
        (f"{name}.{sub} (loaded from {path})", parts[name].get_submodule(sub))
        for name in parts
        for sub, path in parts[name].frozen_parts().items()
    ]
    if vae is not None:
        frozen.append((f"vae (loaded from {folder / PARAMS_FILE}'s model.vae_path)", vae))
    for where, module in frozen:
        try:
            check_finite(module.state_dict(), where)
        except ValueError as e:
            raise GenerationError(f"cannot load {folder}: {one_line(e)}") from None


def _check_index(folder: Path, index: Any, params: Params) -> None:
    path = folder / INDEX_FILE
    if not isinstance(index, dict) or index.get("_class_name") != Ouroboros3DPipeline.__name__:
        found = index.get("_class_name") if isinstance(index, dict) else type(index).__name__
        raise GenerationError(f"{path} is not an {Ouroboros3DPipeline.__name__} index (found {found!r})")
    for name, part in COMPONENTS.items():
        expected = [part.__module__, part.__name__]
        if index.get(name) != expected:
            raise GenerationError(f"{path}: {name} must be {expected}, found {index.get(name)!r}")
    vae = index.get("vae", [None, None])
    if vae != [None, None]:
        raise GenerationError(
            f"{path}: vae {vae!r}: this version saves no VAE (SVD's is frozen, loaded from model.vae_path)"
        )
    for name in COMPONENTS:
        for file in (CONFIG_NAME, WEIGHTS_NAME):
            if not (folder / name / file).is_file():
                raise GenerationError(f"checkpoint {folder} is incomplete: {folder / name / file} is missing ({HINT})")


def _plain(value: Any) -> Any:
    """JSON's view of a value (tuples as lists), for comparing configs."""
    return json.loads(json.dumps(value))


def _check_configs(folder: Path, params: Params) -> None:
    """Each component's config.json describes the model params.json describes."""
    expected = {
        "denoiser": dataclasses.asdict(denoiser_config(params)),
        "reconstructor": resolve_config(**reconstructor_kwargs(params)),
    }
    for name in COMPONENTS:
        path = folder / name / CONFIG_NAME
        saved = read_json(path)
        if not isinstance(saved, dict):
            raise GenerationError(f"{path} must be a JSON object, got {type(saved).__name__}")
        saved = {k: v for k, v in saved.items() if not k.startswith("_")}
        want = _plain(expected[name])
        diffs = [
            f"{k}: {saved.get(k)!r} there, {want.get(k)!r} in {PARAMS_FILE}"
            for k in sorted(set(saved) | set(want))
            if saved.get(k) != want.get(k)
        ]
        if diffs:
            raise GenerationError(f"{path} does not match this model's {PARAMS_FILE}: {'; '.join(diffs[:3])}")


def _load_vae(params: Params):
    """SVD's VAE (frozen, so referenced rather than saved) from ``model.vae_path``; None in pixel space."""
    if params.model.latent == "pixel":
        return None
    from ..models.autoencoder import VAEAutoencoder

    return VAEAutoencoder.from_folder(params.model.vae_path).vae


# --- the model card --------------------------------------------------------------------------


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


def model_card(pipe: Ouroboros3DPipeline, training: Mapping[str, Any] | None = None) -> str:
    """The README.md of a saved model: generated from its params and what the train stage knew."""
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
