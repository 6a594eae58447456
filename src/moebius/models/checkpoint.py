"""Reading and writing weights: the authors' ``.bin`` state dicts, safetensors, and our own
``save_pretrained`` directories (``config.json`` + ``model.safetensors``)."""

import json
import os
from pathlib import Path

import torch
from torch import nn

from moebius.errors import CheckpointError
from moebius.files import atomic_write

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a plain state dict from ``.safetensors`` or a torch pickle (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or truncated files raise many different types
        raise CheckpointError(f"cannot read checkpoint {path}: {_short_reason(exc)}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a flat state dict of tensors")
    return state


def _short_reason(exc: Exception) -> str:
    """One line; torch's weights-only refusal buries the actual reason mid-paragraph."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        detail = text.split(marker, 1)[1].strip().splitlines()[0]
        return f"not a torch state-dict file ({detail})"
    return f"{type(exc).__name__}: {' '.join(text.split())[:300]}"


def _listing(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" … (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_state_dict_strict(
    model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint"
) -> None:
    """Copy ``state`` into ``model``; any missing, unexpected or mis-shaped key is one clear error."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_listing(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_listing(unexpected)})")
    if misshaped:
        detail = [
            f"{k}: {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}" for k in misshaped
        ]
        problems.append(f"{len(misshaped)} keys with wrong shapes ({_listing(detail, 3)})")
    if problems:
        raise CheckpointError(f"{source} does not match the model config: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def save_pretrained(model: nn.Module, directory: str | os.PathLike) -> None:
    """Write ``config.json`` and ``model.safetensors`` (the checkpoint's own key layout)."""
    from safetensors.torch import save_file

    if getattr(model, "fused", False):
        raise ValueError("save the model before fuse(): fused weights no longer match the config")
    directory = Path(directory)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(state, str(tmp)))
    config = json.dumps(model.config.to_dict(), indent=2)
    atomic_write(directory / CONFIG_NAME, lambda tmp: tmp.write_text(config + "\n"))
