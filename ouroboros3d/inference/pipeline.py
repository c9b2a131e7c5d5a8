"""Ouroboros3D for image-to-3D, the diffusers way: :class:`Ouroboros3DPipeline`, saved, loaded and called.

A model folder (what the train stage writes to ``models/<variant>/``)::

    model_index.json        diffusers' pipeline index: the class of each component folder
    params.json             the resolved params the model was trained with (sampling, cameras, ...)
    README.md               the model card (:mod:`~ouroboros3d.inference.model_card`)
    denoiser/               F, MultiViewDenoiser: config.json + diffusion_pytorch_model.safetensors
    reconstructor/          G, Reconstructor: config.json + diffusion_pytorch_model.safetensors

Only trainable weights are saved. Frozen parts loaded from local folders are referenced by
path and loaded from it again: the paper preset's CLIP image encoder by the denoiser's
``config.json`` (``image_encoder_path``) and a frozen VAE by ``params.json``
(``model.vae_path``; ``model_index.json`` then has ``"vae": [null, null]``). A pixel-space
model has no VAE at all.

Loading (:meth:`Ouroboros3DPipeline.from_pretrained`) is local and offline, and strict: the
components' configs must agree with params.json and their weights must fit exactly and be
finite (no NaN or inf: a diverged run's weights would sample black views). Calling the pipeline
on a picture is image-to-3D (Algorithm 2: the recursive sampler, G inside F's loop). Every
failure is a one-line :class:`~ouroboros3d.errors.GenerationError`::

    pipe = Ouroboros3DPipeline.from_pretrained("models/main")
    pipe.model, pipe.params            # the Ouroboros3D (eval mode) and its Params
    result = pipe("mug.png", steps=25, seed=0)    # a GenerationResult: views, Gaussians, settings
    pipe.save_pretrained("models/copy")
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import diffusers
import numpy as np
import torch
from diffusers import DiffusionPipeline
from PIL import Image

from ..build import assemble_model
from ..config import Params
from ..errors import GenerationError
from ..files import atomic_write_text
from ..gaussians.container import Gaussians
from ..model import Reconstruction
from ..models.denoiser import MultiViewDenoiser
from ..models.reconstructor import Reconstructor
from ..sampling import StepRecord, sample, sample_kwargs
from .images import PreparedImage, prepare_image, target_fill
from .model_card import model_card
from .model_folder import (
    CARD_FILE,
    COMPONENTS,
    INDEX_FILE,
    PARAMS_FILE,
    check_device,
    check_frozen_finite,
    check_model_folder,
    load_component,
    load_vae,
    read_checkpoint_params,
)
from .options import check_options, default_elevation, view_cameras
from .result import GenerationResult, GenerationSettings, InputSettings

if TYPE_CHECKING:
    from ..model import Ouroboros3D

__all__ = ["COMPONENTS", "Ouroboros3DPipeline", "surface_mesh"]


class Ouroboros3DPipeline(DiffusionPipeline):
    """Ouroboros3D for image-to-3D: F (``denoiser``), G (``reconstructor``), SVD's VAE (``vae``,
    None in pixel space) and the ``params`` they were trained with.

    ``pipe(image, ...)`` generates the views and 3D Gaussians of the object in ``image``
    (:meth:`__call__`); load once, call for many images. ``model`` is the
    :class:`~ouroboros3d.model.Ouroboros3D` of these components (what sampling and evaluation run).
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
        check_model_folder(folder, params)
        vae = load_vae(folder, params)  # first: the order build_model builds the parts in
        parts = {name: load_component(folder, name) for name in COMPONENTS}
        check_frozen_finite(folder, parts, vae)
        pipe = cls(parts["denoiser"], parts["reconstructor"], vae, params)
        pipe.register_to_config(_name_or_path=str(folder))
        pipe.model.to(device).eval()
        return pipe

    # --- image-to-3D --------------------------------------------------------------------------

    def __call__(
        self,
        image: str | Path | Image.Image | np.ndarray | PreparedImage,
        *,
        steps: int | None = None,
        elevation: float | None = None,
        seed: int = 0,
        feedback: bool = True,
        strip_steps: int = 5,
        progress: bool | Callable[[dict], None] = False,
        mesh: bool = False,
        mesh_resolution: int = 96,
    ) -> GenerationResult:
        """Generate the V views and the 3D Gaussians of the object in ``image`` (Algorithm 2), on this
        pipeline's device.

        Args:
            image: a path, PIL image or (H, W, 3|4) array (prepared by
                :func:`~ouroboros3d.inference.images.prepare_image`: RGBA's alpha is the object mask,
                RGB must show it on a near-white background), or an image prepared already.
            steps: denoising steps (default: the params' ``sample.steps``, 25 as the paper; at most
                :data:`~ouroboros3d.inference.options.MAX_STEPS`).
            elevation: camera elevation in degrees, in (-89, 89) (default
                :func:`~ouroboros3d.inference.options.default_elevation`).
            seed: the initial noise's seed, in [0, 2^64 - 1]; the same seed gives the same views.
            feedback: False zeroes the 3D feedback maps at every step (``feedback_start = 1``),
                for comparison; G still reconstructs at every step.
            strip_steps: how many evenly spaced steps to keep in ``result.steps``.
            progress: True shows a tqdm bar over the steps; a callable gets ``sample``'s
                per-step info dicts instead.
            mesh: also mesh the final Gaussians into ``result.mesh`` (:func:`surface_mesh`); raises
                :class:`ouroboros3d.gaussians.meshing.MeshError` when they render no surface.
            mesh_resolution: voxels per side of the mesh's fusion grid, in [4, 512].

        Raises GenerationError for a bad option or image (before sampling), and when sampling
        produces NaN or infinite values. ``result.timings["load_checkpoint"]`` is 0: loading is
        the caller's (:func:`~ouroboros3d.inference.generate.generate` and the command fill it in).
        """
        params = self.params
        steps = params.sample.steps if steps is None else int(steps)
        elevation = default_elevation(params) if elevation is None else float(elevation)
        check_options(
            steps=steps, elevation=elevation, seed=seed, strip_steps=strip_steps, mesh_resolution=mesh_resolution
        )
        t0 = time.perf_counter()
        if isinstance(image, PreparedImage):
            prepared = image
            res = params.data.resolution
            if tuple(prepared.tensor.shape) != (3, res, res):
                raise GenerationError(
                    f"the prepared image is {tuple(prepared.tensor.shape)}, this model takes (3, {res}, {res}): "
                    f"prepare it with prepare_image(image, {res}, target_fill(params))"
                )
        else:
            prepared = prepare_image(image, params.data.resolution, target_fill(params))
        timings = {"prepare_image": time.perf_counter() - t0, "load_checkpoint": 0.0}

        notes = []
        lo, hi = params.data.train.elevation_deg
        if not lo <= elevation <= hi:
            notes.append(f"elevation {elevation:g} is outside the training range [{lo:g}, {hi:g}]")
        if not feedback and not self.model.has_feedback:
            notes.append("this checkpoint has no feedback networks: --no-feedback changes nothing")
        azimuths, K, c2w = view_cameras(params, elevation)
        feedback_start = params.sample.feedback_start if feedback else 1.0

        t0 = time.perf_counter()
        out, kept = self._sample(prepared, K, c2w, steps, seed, feedback_start, strip_steps, progress)
        timings["sample"] = time.perf_counter() - t0
        _check_finite_result(out, self.name_or_path)
        surface = None
        if mesh:
            t0 = time.perf_counter()
            surface = surface_mesh(out.gaussians, params, mesh_resolution)
            timings["mesh"] = time.perf_counter() - t0

        settings = GenerationSettings(
            image=prepared.source,
            checkpoint=self.name_or_path,
            preset=params.preset,
            device=str(self.device),
            seed=int(seed),
            steps=steps,
            elevation_deg=elevation,
            radius=params.camera.radius,
            fov_deg=params.camera.fov_deg,
            azimuths_deg=[float(a) for a in azimuths],
            resolution=params.data.resolution,
            feedback=bool(feedback),
            feedback_start=feedback_start,
            model_feedback_maps=list(self.model.feedback_maps),
            guidance=list(params.sample.guidance),
            sampler=params.sample.sampler,
            input=InputSettings.of(prepared),
            num_gaussians=int(out.gaussians.num_gaussians),
            torch=torch.__version__,
            python=platform.python_version(),
        )
        return GenerationResult(
            input=prepared,
            views=out.views[0].cpu(),
            gaussians=out.gaussians.detach().to("cpu"),
            recon_rgb=out.recon.rgb[0].cpu(),
            steps=kept,
            azimuths=azimuths,
            K=K,
            c2w=c2w,
            params=params,
            settings=settings,
            timings=timings,
            notes=notes,
            mesh=surface,
        )

    def _sample(
        self, prepared: PreparedImage, K, c2w, steps: int, seed: int, feedback_start: float, strip_steps, progress
    ):
        """Algorithm 2 on one prepared image: ``sample``'s result and the kept steps' records (on the CPU)."""
        keep = set(_strip_indices(steps, strip_steps))
        kept: list[StepRecord] = []
        bar = None
        if progress is True:
            from ..progress import bar as progress_bar

            bar = progress_bar(total=steps, desc="denoising", unit="step", leave=False)

        def on_step(info: dict) -> None:
            if info["i"] in keep and info["record"] is not None:
                kept.append(_to_cpu_record(info["record"]))
            if bar is not None:
                bar.update(1)
            elif callable(progress):
                progress(info)

        dev = str(self.device)
        try:
            out = sample(
                self.model,
                prepared.tensor[None].to(dev),
                K[None].to(dev),
                c2w[None].to(dev),
                **sample_kwargs(self.params.sample, steps=steps, feedback_start=feedback_start),
                seeds=[int(seed)],
                on_step=on_step,
            )
        finally:
            if bar is not None:
                bar.close()
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
        return out, sorted(kept, key=lambda r: r.i)


# --- the parts of a generation --------------------------------------------------------------


def _strip_indices(steps: int, count: int) -> list[int]:
    if count <= 0:
        return []
    return sorted({round(x) for x in np.linspace(0, steps - 1, min(count, steps))})


def _to_cpu_record(record: StepRecord) -> StepRecord:
    r = record.recon
    recon = Reconstruction(r.gaussians.detach().to("cpu"), r.rgb.cpu(), r.alpha.cpu(), r.ccm.cpu())
    return StepRecord(record.i, record.sigma, record.views.cpu(), recon, record.fed_back)


def _check_finite_result(out, checkpoint: str | None) -> None:
    """GenerationError when sampling produced NaN or inf: written out, they would be black views and
    a .ply without vertices, with nothing said (the weights are checked when they load; this catches
    the rest: an overflow, a broken device)."""
    g = out.gaussians
    parts = {"views": out.views, "Gaussian means": g.means, "Gaussian scales": g.scales}
    parts |= {"Gaussian opacities": g.opacities, "Gaussian colours": g.colors, "Gaussian rotations": g.quats}
    bad = [name for name, t in parts.items() if not bool(torch.isfinite(t).all())]
    if bad:
        raise GenerationError(
            f"sampling with {checkpoint} produced NaN or infinite values ({', '.join(bad)}); nothing was written"
        )


def surface_mesh(gaussians: Gaussians, params: Params, resolution: int = 96):
    """The Gaussians' surface (``pipe(image, mesh=True)``'s), meshed on the device they were sampled on,
    by cameras at the checkpoint's radius and field of view; raises MeshError where there is none."""
    from ..gaussians.meshing import gaussians_to_mesh

    camera = params.camera
    return gaussians_to_mesh(gaussians, resolution=resolution, radius=camera.radius, fov_deg=camera.fov_deg)
