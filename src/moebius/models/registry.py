"""From a config (preset name, YAML/JSON path, dict or config object) to a built model.

A model family registers its config class and network class under a short
``model_type``; the authors' YAML ``model_type`` strings map onto those.
"""

import importlib
import json
from pathlib import Path
from typing import Any

import yaml

from moebius.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
# the released pipelines' VAE (SDXL's AutoencoderKL config), for benchmarks on random weights
SDXL_VAE_CONFIG = CONFIG_DIR / "sdxl_vae_config.json"


def vae_scale_factor(vae) -> int:
    """Pixels per latent cell along each side: an ``AutoencoderKL`` halves the map between
    every two of its levels (8 for SD's and SDXL's four)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


# model_type -> (module, config class, network class)
FAMILIES: dict[str, tuple[str, str, str]] = {
    "moebius": ("moebius.models.moebius_unet", "MoebiusConfig", "MoebiusUNet"),
    "pixelhacker": ("moebius.models.pixelhacker", "PixelHackerConfig", "PixelHackerUNet"),
}
AUTHORS_MODEL_TYPES: dict[str, str] = {
    "UNet2DLambdaDWConvMixFFNConditionModel_prune_down_mid_up_block_8x8": "moebius",
    "UNet2DGLAConditionModel": "pixelhacker",
    "PixelHacker": "pixelhacker",
}
PRESETS: dict[str, str] = {
    "moebius-0.2b": "moebius-0.2b.yaml",
    "pixelhacker": "pixelhacker.yaml",
}


def _family(model_type: str) -> tuple[type, type]:
    if not isinstance(model_type, str):
        raise ConfigError(f"model_type must be a string, got {model_type!r}")
    model_type = AUTHORS_MODEL_TYPES.get(model_type, model_type)
    if model_type not in FAMILIES:
        raise ConfigError(f"unknown model_type {model_type!r}; known: {sorted(FAMILIES)}")
    module, config_cls, model_cls = FAMILIES[model_type]
    module = importlib.import_module(module)
    return getattr(module, config_cls), getattr(module, model_cls)


def _read_document(path: Path) -> dict:
    try:
        text = path.read_text()
        document = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    if not isinstance(document, dict):
        raise ConfigError(f"config {path} does not hold a mapping")
    return document


def resolve_config(config: Any, image_size: int | None = None):
    """Return a config object for ``config``; ``image_size`` (pixels) overrides the trained size."""
    if isinstance(config, str) and config in PRESETS:
        config = CONFIG_DIR / PRESETS[config]
    if isinstance(config, (str, Path)):
        path = Path(config)
        if path.is_dir():
            path = path / "config.json"
        if not path.exists():
            raise ConfigError(
                f"{config!s} is neither a preset ({', '.join(PRESETS)}) nor a config file"
            )
        config = _read_document(path)
    if isinstance(config, dict):
        config = config_from_dict(config)
    if image_size is not None:
        if image_size % 8:
            raise ConfigError(f"image_size must be a multiple of 8, got {image_size}")
        config.sample_size = image_size // 8
    return config


def config_from_dict(document: dict):
    """Accepts our own ``config.json`` layout or the authors' YAML / constructor layouts; the
    latter name their class in ``model_type`` or, as diffusers writes it, ``_class_name``."""
    if "model" in document:  # the authors' training YAML
        if not isinstance(document["model"], dict):
            raise ConfigError("the model section of the authors' config is not a mapping")
        config_cls, _ = _family(document["model"].get("model_type", ""))
        return config_cls.from_authors_yaml(document)
    model_type = document.get("model_type", document.get("_class_name"))
    if model_type is None:
        raise ConfigError("config has no model_type")
    config_cls, _ = _family(model_type)
    if model_type in AUTHORS_MODEL_TYPES:  # the authors' constructor arguments
        return config_cls.from_authors_dict(document)
    fields = {k: v for k, v in document.items() if k != "model_type"}
    try:
        return config_cls(**fields)
    except TypeError as exc:
        raise ConfigError(f"bad config for {model_type}: {exc}") from exc


def build_network(config):
    """The bare denoiser (no LCG wrapper) for a config object."""
    _, model_cls = _family(config.model_type)
    return model_cls(config)
