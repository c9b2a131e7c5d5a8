"""Atomic file writes (a crash leaves the old file or the new one, never half of either), and
the parts of the model saved the diffusers way (:class:`PretrainedMixin`)."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import secrets
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import one_line

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "PretrainedMixin",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_finite",
    "check_state",
    "file_sha256",
    "save_tensors",
]


TMP_PREFIX = ".tmp-"  # what an interrupted write leaves; ouroboros3d.data.layout cleans these up


def _atomic(path: Path, write) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the name is bound before the file exists: an interrupt (SIGINT) at any point after the file
    # is created finds ``tmp`` set and removes it (mkstemp's tuple could be lost between its return
    # and the assignment, leaving a stray temporary file)
    tmp = path.parent / f"{TMP_PREFIX}{path.name}.{secrets.token_hex(6)}"
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        write(str(tmp))
        os.chmod(tmp, 0o644)  # created 0600: readable by others once complete
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    _atomic(Path(path), lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """safetensors, atomically; tensors are moved to CPU and made contiguous."""
    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    _atomic(Path(path), lambda tmp: save_file(cpu, tmp, metadata=metadata))


# --- a component saved the diffusers way ---------------------------------------------------

CONFIG_NAME = "config.json"  # diffusers' names: what ModelMixin.save_pretrained writes
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


class PretrainedMixin:
    """``save_pretrained``/``from_pretrained`` of a diffusers ``ModelMixin`` + ``ConfigMixin``
    part of the model, in diffusers' layout (``config.json`` and
    ``diffusion_pytorch_model.safetensors``), holding its trainable weights only.

    List it before ``ModelMixin``. A part loaded from a local folder at construction and frozen
    (SVD's CLIP image encoder) is named by :meth:`frozen_parts` and referenced by that path in
    the config instead of being saved; loading builds it from the path again. Loading is
    strict and offline: every saved tensor must fit and every other one must be frozen.
    """

    def __getattr__(self, name: str):
        # diffusers' ModelMixin answers a missing attribute with the config value of that name
        # (deprecated): here config keys share names with submodules and buffers (image_encoder,
        # added_time_ids), which must win, so attributes resolve as in a plain nn.Module
        return torch.nn.Module.__getattr__(self, name)

    def frozen_parts(self) -> dict[str, str]:
        """``{submodule name: the local folder it is loaded from}`` of the parts not saved."""
        return {}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict without the frozen parts: what :meth:`save_pretrained` writes."""
        prefixes = tuple(f"{name}." for name in self.frozen_parts())
        trained = (
            [k for k, p in self.named_parameters() if p.requires_grad and k.startswith(prefixes)] if prefixes else []
        )
        if trained:
            raise ValueError(
                f"{type(self).__name__}: {trained[0]} of a part loaded from a local folder is trainable; "
                "saving it by reference would lose its training"
            )
        return {k: v for k, v in self.state_dict().items() if not (prefixes and k.startswith(prefixes))}

    def save_pretrained(self, save_directory: str | Path) -> None:
        """``config.json`` and the trainable weights as safetensors into ``save_directory``."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = self.trainable_state_dict()
        config = json.loads(self.to_json_string())
        config.pop("_name_or_path", None)  # where a loaded part came from: not part of what it is
        atomic_write_text(folder / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True) + "\n")
        save_tensors(folder / WEIGHTS_NAME, tensors, metadata={"format": "pt"})

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, subfolder: str | None = None):
        """The part saved in a LOCAL folder by :meth:`save_pretrained`, in eval mode.

        Raises FileNotFoundError (no such folder or file), OSError (an unreadable config.json or
        weights file) or ValueError (a config key that is no argument of the class, weights that
        do not fit the model its config.json builds, or that hold NaN or infinite values).
        """
        folder = Path(pretrained_model_name_or_path)
        folder = folder / subfolder if subfolder else folder
        if not folder.is_dir():
            raise FileNotFoundError(f"{cls.__name__}: local folder {str(folder)!r} does not exist")
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{cls.__name__}: {folder / name} is missing")
        config = cls.load_config(str(folder), local_files_only=True)
        # diffusers' from_config only warns of keys __init__ does not take and builds with its
        # defaults instead: a config.json of other code would load as another network
        arguments = inspect.signature(cls.__init__).parameters
        unknown = sorted(k for k in config if not k.startswith("_") and k not in arguments)
        if unknown:
            raise ValueError(
                f"{folder / CONFIG_NAME}: unknown config keys {unknown} ({cls.__name__} takes no such argument)"
            )
        weights = folder / WEIGHTS_NAME
        try:
            state = load_file(str(weights))
        except Exception as e:  # a truncated or foreign file
            raise OSError(f"cannot read weights {weights}: {one_line(e)}") from None
        check_finite(state, f"{folder.name} ({cls.__name__}) weights {weights}")
        model = cls.from_config(config)
        check_state(state, model.trainable_state_dict(), weights)
        model.load_state_dict(state, strict=False)
        model.register_to_config(_name_or_path=str(folder))
        return model.eval()


def check_state(
    state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], path: str | Path, optional: tuple[str, ...] = ()
) -> None:
    """ValueError naming the differing keys/shapes unless ``state`` has exactly the keys and shapes of ``own``
    (but those of ``own`` that start with an ``optional`` prefix, which it may lack) and is not empty."""
    missing = sorted(k for k in set(own) - set(state) if not k.startswith(optional))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong or not state:
        raise ValueError(
            f"{path} does not match this model: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"shape mismatch {wrong[:5]} (was it trained with other params?)"
        )


def check_finite(tensors: dict[str, torch.Tensor], where: str | Path) -> None:
    """ValueError naming the first tensor of ``tensors`` that holds a NaN or an infinite value.

    A diverged or corrupted training run saves such weights; a model loaded with them samples
    NaN everywhere, which the image writers turn into black pictures and the .ply writer into an
    empty file, silently. One ``isfinite().all()`` per floating-point tensor: cheap next to reading it.
    """
    for key, tensor in tensors.items():
        if tensor.is_floating_point() or tensor.is_complex():
            if not bool(torch.isfinite(tensor).all()):
                nan = int(torch.isnan(tensor).sum())
                inf = int(torch.isinf(tensor).sum())
                raise ValueError(
                    f"{where}: tensor {key!r} holds non-finite values ({nan} NaN, {inf} inf of "
                    f"{tensor.numel()}): the weights are corrupt (a diverged training run?); retrain or "
                    "restore them"
                )
