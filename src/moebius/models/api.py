"""The public entry points: build, load and round-trip models."""

import os
from pathlib import Path
from typing import Any

import torch

from moebius.models.checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    load_state_dict_strict,
    read_state_dict,
)
from moebius.models.lcg import LCGModel
from moebius.models.registry import build_network, resolve_config


def build_model(config: Any, image_size: int | None = None) -> LCGModel:
    """A randomly initialised LCG-wrapped model.

    ``config``: a preset name (``"moebius-0.2b"``, ``"pixelhacker"``), a path to an
    authors'-style YAML or our ``config.json``, a dict, or a config object.
    ``image_size`` (pixels) sets the resolution the position tables are built for.
    """
    cfg = resolve_config(config, image_size)
    return LCGModel(build_network(cfg), cfg.num_categories, cfg.encoder_hid_dim)


def load_model(
    config: Any,
    checkpoint: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    fuse: bool = False,
) -> LCGModel:
    """Build ``config`` and strictly load ``checkpoint`` (authors' ``.bin``/``.pt`` or
    ``.safetensors``, keys ``embedding_layer.*`` / ``diff_model.*``); returns it in eval mode."""
    model = build_model(config)
    load_state_dict_strict(model, read_state_dict(checkpoint), source=str(checkpoint))
    model.eval()
    if fuse:
        model.fuse()
    return model.to(device=device, dtype=dtype)


def from_pretrained(
    directory: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    fuse: bool = False,
) -> LCGModel:
    """Load a directory written by :func:`moebius.save_pretrained`."""
    directory = Path(directory)
    return load_model(directory / CONFIG_NAME, directory / WEIGHTS_NAME, device, dtype, fuse)
