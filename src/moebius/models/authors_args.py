"""The authors' diffusers-style constructor arguments → our config fields.

Both of their networks subclass diffusers' ``UNet2DConditionModel``, so a config of theirs may
name any of its many constructor arguments; our networks implement most of those at one value
only. A value we cannot honour is a :class:`ConfigError`, never silently dropped.
"""

from collections.abc import Collection, Mapping
from typing import Any

from moebius.errors import ConfigError


def _comparable(value: Any) -> Any:
    # YAML and JSON give lists where the defaults are tuples.
    return tuple(value) if isinstance(value, list) else value


def read_authors_args(
    document: Mapping[str, Any],
    family: str,
    fields: Collection[str],
    fixed: Mapping[str, Any],
    ignored: Collection[str] = (),
    renamed: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Our config fields from the constructor arguments in ``document``.

    Keys starting with ``_`` (diffusers' bookkeeping such as ``_class_name``) and ``ignored``
    keys are skipped; a ``fixed`` key must hold the one value our network implements;
    ``renamed`` maps their names to ours; every other key must be one of ``fields``.
    ``family`` names the model in error messages.
    """
    renamed = renamed or {}
    result = {}
    for key, value in document.items():
        if key.startswith("_") or key in ignored:
            continue
        if key in fixed:
            if _comparable(value) != _comparable(fixed[key]):
                raise ConfigError(
                    f"{family} option {key}={value!r} is not supported (only {fixed[key]!r})"
                )
            continue
        key = renamed.get(key, key)
        if key not in fields:
            raise ConfigError(f"unknown {family} option {key!r}")
        result[key] = value
    return result


def one_per_model(fields: dict[str, Any], key: str, family: str) -> None:
    """Collapse a per-level list that repeats one value (diffusers accepts both forms) in place;
    our networks use one value for every level, so differing values are a :class:`ConfigError`."""
    value = fields.get(key)
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ConfigError(
                f"{family} needs one value of {key} for all levels, got {list(value)!r}"
            )
        fields[key] = value = value[0]
    if value is not None and not isinstance(value, int):
        raise ConfigError(f"{family} option {key} must be an integer, got {value!r}")


def latent_size(document: Mapping[str, Any]) -> int:
    """The latent side the authors' training YAML builds its network for: ``data.image_size``
    over the VAE's ``downsample_ratio`` (8 when not given)."""
    data, vae = document.get("data"), document.get("vae") or {}
    size = data.get("image_size") if isinstance(data, Mapping) else None
    ratio = vae.get("downsample_ratio", 8) if isinstance(vae, Mapping) else 8
    if not isinstance(size, int) or not isinstance(ratio, int) or size <= 0 or ratio <= 0:
        raise ConfigError("the authors' config needs data.image_size, a positive integer")
    return size // ratio
