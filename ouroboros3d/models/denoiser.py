"""The multi-view denoiser ``F``: SVD's spatio-temporal UNet with cameras and 3D feedback.

The network is diffusers' :class:`~diffusers.UNetSpatioTemporalConditionModel` (Stable
Video Diffusion's architecture). The V views of an object are its frames, so its temporal
layers are the cross-view attention. Around it we add, as the paper's implementation:

* the SVD conditioning: the input view's latent ``cond_latent`` is concatenated on channels
  to every view's noisy input (UNet ``in_channels = 2 C``) and one image token
  ``cond_embedding`` (B, T, D) is the cross-attention context (:class:`ImageEncoder` makes
  it: a small CNN for from-scratch presets, or a frozen CLIP image encoder loaded from a
  local folder for the paper preset);
* camera conditioning: per-pixel Plücker rays -> harmonic embedding -> 1x1-conv MLP
  (:class:`CameraEmbedding`), added to the hidden states before every down, mid and up
  block, pooled to the block's resolution and projected to its channels. The projections
  are zero-initialised, so adding cameras to a pretrained SVD starts neutral;
* 3D feedback (supplementary eq. 10-12): one :class:`~ouroboros3d.models.feedback.FeedbackNetwork`
  per fed-back map ("ccm" = ``F^0``, "rgb" = ``F^1``); their per-scale features are summed
  and added to the encoder feature ``F_enc^i`` of down block i, after the block's
  resnets/attentions and before its downsampler (so both the skip connection and the next
  level see them; T2I-Adapter's injection point). For a 64² latent this is at 64, 32, 16
  and 8, Table 1's resolutions.

SVD's "added time ids" (fps, motion bucket, noise augmentation) are kept, so SVD's
checkpoint loads unchanged, but fed a constant vector (the ``added_time_ids`` argument,
by default SVD's own inference defaults fps-1 = 6, motion bucket 127, augmentation 0.02):
multi-view generation has no frame rate or motion, and with a constant input the
add-embedding is only a learned bias.

:meth:`MultiViewDenoiser.forward` walks the UNet's blocks itself (diffusers' forward takes
no extra residuals); with no feedback and neutral cameras it reproduces
``UNetSpatioTemporalConditionModel.forward`` exactly. The network knows nothing of EDM:
``c_noise`` goes straight into the UNet's timestep embedding, as SVD does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import ConfigMixin, ModelMixin, UNetSpatioTemporalConditionModel
from diffusers.configuration_utils import register_to_config
from torch import nn

from ..files import PretrainedMixin
from .architecture import FEEDBACK_MAPS, check_denoiser
from .conditioning import CameraEmbedding, ImageEncoder, require_folder
from .feedback import FeedbackNetwork

__all__ = [
    "FEEDBACK_MAPS",
    "MultiViewDenoiser",
    "count_parameters",
    "parameter_summary",
]

SVD_DOWN_BLOCKS = (
    "CrossAttnDownBlockSpatioTemporal",
    "CrossAttnDownBlockSpatioTemporal",
    "CrossAttnDownBlockSpatioTemporal",
    "DownBlockSpatioTemporal",
)
SVD_UP_BLOCKS = (
    "UpBlockSpatioTemporal",
    "CrossAttnUpBlockSpatioTemporal",
    "CrossAttnUpBlockSpatioTemporal",
    "CrossAttnUpBlockSpatioTemporal",
)


class MultiViewDenoiser(PretrainedMixin, ModelMixin, ConfigMixin):
    """``F(x; c_noise, conditioning)``: V views denoised jointly by SVD's UNet.

    Submodules: ``unet`` (a plain ``UNetSpatioTemporalConditionModel``, so SVD's weights
    load into it unchanged), ``camera`` (:class:`CameraEmbedding`), ``feedback_networks``
    (a ModuleDict, one :class:`FeedbackNetwork` per name in ``feedback_maps``; empty when
    built without feedback) and ``image_encoder`` (None for ``image_encoder="none"``; a
    frozen CLIP's parameters have ``requires_grad=False``, so optimise only parameters that
    require gradients).

    A diffusers model: the keyword arguments below are its architecture and, through
    ``@register_to_config``, its ``self.config`` (sequences as tuples); ``from_config`` and
    ``from_pretrained`` build it with ``cls(**config)``. The defaults are SVD's UNet (the
    ``paper`` preset); params.yaml's ``model.denoiser`` reaches it through
    :func:`ouroboros3d.build.denoiser_kwargs`. ``save_pretrained`` writes the trainable
    weights: a frozen CLIP is referenced by ``image_encoder_path``, not saved.

    Args:
        latent_channels: C of the denoised tensor (4 for SVD's VAE latents, 3 in pixel
            space); the UNet takes ``2 C`` channels (noisy views + the input view's latent).
        sample_size: the latent resolution h = w.
        block_out_channels, down_block_types, up_block_types, layers_per_block,
            transformer_layers_per_block, num_attention_heads, cross_attention_dim,
            addition_time_embed_dim: the UNet's, as diffusers names them (one entry per level).
        added_time_ids: the constant vector SVD's added time ids get (module docstring).
        image_encoder: "cnn" (learned from scratch), "clip" (a frozen
            CLIPVisionModelWithProjection from the local folder ``image_encoder_path``) or
            "none" (the caller supplies ``cond_embedding`` itself); ``image_encoder_channels``
            are the CNN's widths.
        feedback_maps: the fed-back maps that get a feedback network (any of "ccm", "rgb").
        feedback_unshuffle: the maps come at image resolution ``sample_size *
            feedback_unshuffle`` (512 = 64 x 8 in the paper) and are pixel-unshuffled by it.
        feedback_blocks_per_scale: residual blocks per scale of each feedback network.
        camera_frequencies, camera_embed_dim: the Plücker rays' harmonic embedding.
        gradient_checkpointing: checkpoint the UNet's blocks (memory for compute).

    Raises:
        ValueError (:class:`~ouroboros3d.models.architecture.ArchitectureError`): levels of
            unequal lengths, no added time id, an unknown image encoder or feedback map.
    """

    @register_to_config
    def __init__(
        self,
        *,
        latent_channels: int = 4,
        sample_size: int = 64,
        block_out_channels: Sequence[int] = (320, 640, 1280, 1280),
        down_block_types: Sequence[str] = SVD_DOWN_BLOCKS,
        up_block_types: Sequence[str] = SVD_UP_BLOCKS,
        layers_per_block: int = 2,
        transformer_layers_per_block: int = 1,
        num_attention_heads: Sequence[int] = (5, 10, 20, 20),
        cross_attention_dim: int = 1024,
        addition_time_embed_dim: int = 256,
        added_time_ids: Sequence[float] = (6.0, 127.0, 0.02),
        image_encoder: str = "clip",
        image_encoder_path: str | None = None,
        image_encoder_channels: Sequence[int] = (32, 64, 128, 256),
        feedback_maps: Sequence[str] = FEEDBACK_MAPS,
        feedback_unshuffle: int = 8,
        feedback_blocks_per_scale: int = 3,
        camera_frequencies: int = 6,
        camera_embed_dim: int = 128,
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        check_denoiser(
            block_out_channels,
            down_block_types,
            up_block_types,
            num_attention_heads,
            added_time_ids,
            image_encoder,
            feedback_maps,
        )
        # params.yaml and config.json give lists: the config holds tuples, so that a denoiser's
        # config compares equal however it was built (from params, from a saved folder)
        self.register_to_config(
            **{k: tuple(v) for k, v in self.config.items() if isinstance(v, list) and not k.startswith("_")}
        )
        c = latent_channels
        self.unet = UNetSpatioTemporalConditionModel(
            sample_size=sample_size,
            in_channels=2 * c,
            out_channels=c,
            down_block_types=tuple(down_block_types),
            up_block_types=tuple(up_block_types),
            block_out_channels=tuple(block_out_channels),
            addition_time_embed_dim=addition_time_embed_dim,
            projection_class_embeddings_input_dim=addition_time_embed_dim * len(added_time_ids),
            layers_per_block=layers_per_block,
            cross_attention_dim=cross_attention_dim,
            transformer_layers_per_block=transformer_layers_per_block,
            num_attention_heads=tuple(num_attention_heads),
        )
        # the output conv starts at zero, as in EDM's and ADM's UNets: an untrained F outputs 0,
        # so D(x; sigma) = c_skip x starts as the best guess without the net (the data mean at
        # high noise) instead of random colour noise. A pretrained UNet's weights replace it.
        nn.init.zeros_(self.unet.conv_out.weight)
        nn.init.zeros_(self.unet.conv_out.bias)
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.register_buffer("added_time_ids", torch.tensor(tuple(added_time_ids)), persistent=False)

        ch = tuple(block_out_channels)
        n = len(ch)
        sites = {f"down{i}": ch[max(i - 1, 0)] for i in range(n)}  # input channels of down block i
        sites["mid"] = ch[-1]
        rev = list(reversed(ch))
        sites |= {f"up{i}": rev[max(i - 1, 0)] for i in range(n)}  # input channels of up block i
        self.camera = CameraEmbedding(sites, camera_frequencies, camera_embed_dim)

        self.feedback_networks = nn.ModuleDict(
            {name: FeedbackNetwork(3, feedback_unshuffle, ch, feedback_blocks_per_scale) for name in feedback_maps}
        )

        self.image_encoder = (
            None
            if image_encoder == "none"
            else ImageEncoder(image_encoder, cross_attention_dim, tuple(image_encoder_channels), image_encoder_path)
        )

    def frozen_parts(self) -> dict[str, str]:
        """The frozen CLIP image encoder, loaded from ``image_encoder_path``: not saved."""
        if self.config.image_encoder == "clip":
            return {"image_encoder.clip": str(self.config.image_encoder_path)}
        return {}

    # -- conditioning helpers --

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """The input view (B, 3, H, W) in [0, 1] -> ``cond_embedding`` (B, 1, cross_attention_dim)."""
        if self.image_encoder is None:
            raise RuntimeError("this denoiser was built with image_encoder='none'; supply cond_embedding directly")
        return self.image_encoder(image)

    def feedback_features(self, feedback: Mapping[str, torch.Tensor]) -> list[torch.Tensor] | None:
        """Eq. 10-11 summed per scale: maps (B, V, 3, H, W) -> one (B*V, C_i, h_i, w_i) per down block."""
        unknown = [k for k in feedback if k not in self.feedback_networks]
        if unknown:
            raise ValueError(
                f"feedback maps {unknown} have no feedback network (this model has {tuple(self.feedback_networks)})"
            )
        summed: list[torch.Tensor] | None = None
        for name, maps in feedback.items():
            if maps.ndim != 5 or maps.shape[2] != 3:
                raise ValueError(f"feedback map {name!r} must be (B, V, 3, H, W), got {tuple(maps.shape)}")
            network = self.feedback_networks[name]
            features = network(maps.flatten(0, 1).to(network.conv_in.weight.dtype))
            summed = features if summed is None else [a + b for a, b in zip(summed, features, strict=True)]
        return summed

    def load_pretrained_unet(self, folder: str | Path) -> None:
        """Load SVD's UNet weights from a LOCAL diffusers folder (the ``unet`` subfolder of the SVD repo)."""
        path = require_folder(folder, "pretrained SVD UNet")
        pretrained = UNetSpatioTemporalConditionModel.from_pretrained(str(path), local_files_only=True)
        self.unet.load_state_dict(pretrained.state_dict())

    # -- forward --

    def forward(
        self,
        x: torch.Tensor,
        c_noise: torch.Tensor,
        *,
        cond_latent: torch.Tensor,
        cond_embedding: torch.Tensor,
        plucker: torch.Tensor,
        feedback: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Denoise V views jointly.

        Args:
            x: (B, V, C, h, w) noisy (already input-scaled) latents of the views.
            c_noise: (B,) or scalar noise conditioning, fed to the UNet's timestep embedding.
            cond_latent: (B, C, h, w) latent of the input view, concatenated to every view.
            cond_embedding: (B, T, cross_attention_dim) cross-attention context (T = 1 in SVD).
            plucker: (B, V, 6, h', w') Plücker rays (direction, moment) of each view's pixels,
                usually at the latent resolution; pooled to each block's resolution.
            feedback: None (no feedback path) or ``{"ccm": P, "rgb": T}`` (any subset of the
                model's ``feedback_maps``) of rendered maps (B, V, 3, H, W) in [0, 1] at image
                resolution.

        Returns:
            (B, V, C, h, w), the network output ``F`` (EDMPrecond turns it into ``D``).
        """
        if x.ndim != 5:
            raise ValueError(f"x must be (B, V, C, h, w), got {tuple(x.shape)}")
        batch, views = x.shape[:2]
        unet = self.unet
        sample = torch.cat([x, cond_latent[:, None].expand(-1, views, -1, -1, -1).to(x.dtype)], dim=2)

        # 1. time: as UNetSpatioTemporalConditionModel.forward, c_noise is the timestep.
        timesteps = torch.as_tensor(c_noise, device=x.device)
        if timesteps.ndim == 0:
            timesteps = timesteps[None]
        timesteps = timesteps.expand(batch)
        emb = unet.time_embedding(unet.time_proj(timesteps).to(dtype=x.dtype))
        added = self.added_time_ids.to(x.dtype).expand(batch, -1)
        time_embeds = unet.add_time_proj(added.flatten()).reshape((batch, -1)).to(emb.dtype)
        emb = emb + unet.add_embedding(time_embeds)

        # Views become frames: (B, V, ...) -> (B*V, ...), per-object conditioning repeated per view.
        sample = sample.flatten(0, 1)
        emb = emb.repeat_interleave(views, dim=0, output_size=batch * views)
        context = cond_embedding.repeat_interleave(views, dim=0, output_size=batch * views)
        indicator = torch.zeros(batch, views, dtype=sample.dtype, device=sample.device)
        rays = self.camera.embed(plucker.flatten(0, 1).to(sample.dtype))
        extra = None if feedback is None else self.feedback_features(feedback)

        # 2. pre-process
        sample = unet.conv_in(sample)

        # 3. down, with the feedback added inside each block (eq. 12)
        skips: tuple[torch.Tensor, ...] = (sample,)
        for i, block in enumerate(unet.down_blocks):
            sample = sample + self.camera.at(f"down{i}", rays, sample.shape[-2:])
            sample, res = self._down_block(block, sample, emb, context, indicator, None if extra is None else extra[i])
            skips += res

        # 4. mid
        sample = sample + self.camera.at("mid", rays, sample.shape[-2:])
        sample = unet.mid_block(
            hidden_states=sample, temb=emb, encoder_hidden_states=context, image_only_indicator=indicator
        )

        # 5. up, as diffusers (including its forced upsample size for odd resolutions)
        forward_upsample_size = any(s % 2**unet.num_upsamplers != 0 for s in x.shape[-2:])
        upsample_size = None
        for i, block in enumerate(unet.up_blocks):
            res = skips[-len(block.resnets) :]
            skips = skips[: -len(block.resnets)]
            if i < len(unet.up_blocks) - 1 and forward_upsample_size:
                upsample_size = skips[-1].shape[2:]
            sample = sample + self.camera.at(f"up{i}", rays, sample.shape[-2:])
            kwargs: dict[str, Any] = {"encoder_hidden_states": context} if _has_cross_attention(block) else {}
            sample = block(
                hidden_states=sample,
                temb=emb,
                res_hidden_states_tuple=res,
                upsample_size=upsample_size,
                image_only_indicator=indicator,
                **kwargs,
            )

        # 6. post-process
        sample = unet.conv_out(unet.conv_act(unet.conv_norm_out(sample)))
        return sample.reshape(batch, views, *sample.shape[1:])

    @staticmethod
    def _down_block(
        block: nn.Module,
        hidden: torch.Tensor,
        temb: torch.Tensor,
        context: torch.Tensor,
        indicator: torch.Tensor,
        feedback: torch.Tensor | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """A (CrossAttn)DownBlockSpatioTemporal's forward with ``feedback`` added before its downsampler."""
        attentions = block.attentions if _has_cross_attention(block) else None
        checkpoint = torch.is_grad_enabled() and block.gradient_checkpointing
        outputs: tuple[torch.Tensor, ...] = ()
        last = len(block.resnets) - 1
        for j, resnet in enumerate(block.resnets):
            if checkpoint:
                hidden = block._gradient_checkpointing_func(resnet, hidden, temb, indicator)
            else:
                hidden = resnet(hidden, temb, image_only_indicator=indicator)
            if attentions is not None:
                hidden = attentions[j](
                    hidden, encoder_hidden_states=context, image_only_indicator=indicator, return_dict=False
                )[0]
            if j == last and feedback is not None:
                if feedback.shape != hidden.shape:
                    raise ValueError(
                        f"feedback features {tuple(feedback.shape)} do not match the encoder features "
                        f"{tuple(hidden.shape)}: check the feedback maps' resolution and feedback_unshuffle"
                    )
                hidden = hidden + feedback
            outputs += (hidden,)
        if block.downsamplers is not None:
            for downsampler in block.downsamplers:
                hidden = downsampler(hidden)
            outputs += (hidden,)
        return hidden, outputs


def _has_cross_attention(block: nn.Module) -> bool:
    return bool(getattr(block, "has_cross_attention", False))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_summary(model: MultiViewDenoiser) -> dict[str, int]:
    """Parameter counts per part: unet, camera, each feedback network, image_encoder, total."""
    summary = {"unet": count_parameters(model.unet), "camera": count_parameters(model.camera)}
    summary |= {f"feedback_{k}": count_parameters(v) for k, v in model.feedback_networks.items()}
    if model.image_encoder is not None:
        summary["image_encoder"] = count_parameters(model.image_encoder)
    summary["total"] = count_parameters(model)
    return summary
