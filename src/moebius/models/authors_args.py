"""The authors' diffusers-style constructor arguments → our config fields.

Both of their networks subclass diffusers' ``UNet2DConditionModel``, so a config of theirs may
name any of its many constructor arguments; our networks implement most of those at one value
only. A value we cannot honour is a :class:`ConfigError`, never silently dropped.
"""

from collections.abc import Collection, Mapping
from typing import Any

from moebius.errors import ConfigError

# diffusers UNet2DConditionModel arguments that both networks implement at this value only.
_UNET_FIXED_ARGS = {
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "only_cross_attention": False,
    "downsample_padding": 1,
    "dropout": 0.0,
    "act_fn": "silu",
    "transformer_layers_per_block": 1,
    "reverse_transformer_layers_per_block": None,
    "num_attention_heads": None,
    "dual_cross_attention": False,
    "use_linear_projection": False,
    "class_embed_type": None,
    "addition_embed_type": None,
    "addition_time_embed_dim": None,
    "num_class_embeds": None,
    "upcast_attention": False,
    "resnet_time_scale_shift": "default",
    "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "time_cond_proj_dim": None,
    "attention_type": "default",
    "class_embeddings_concat": False,
    "mid_block_only_cross_attention": None,
    "cross_attention_norm": None,
    "encoder_hid_dim_type": "text_proj",
}
# Arguments without effect in both: no class or addition embedding is built.
_UNET_IGNORED_ARGS = {
    "model_type",
    "projection_class_embeddings_input_dim",
    "addition_embed_type_num_heads",
}
# diffusers' attention_head_dim is the number of heads (a naming quirk of theirs).
_RENAMED_ARGS = {"attention_head_dim": "heads", "num_embeddings": "num_categories"}


def _comparable(value: Any) -> Any:
    # YAML and JSON give lists where the defaults are tuples.
    return tuple(value) if isinstance(value, list) else value


def read_authors_args(
    document: Mapping[str, Any],
    family: str,
    fields: Collection[str],
    fixed: Mapping[str, Any],
    ignored: Collection[str] = (),
) -> dict[str, Any]:
    """Our config fields from the constructor arguments in ``document``.

    Keys starting with ``_`` (diffusers' bookkeeping such as ``_class_name``) and ignored keys
    (those without effect in both networks, plus ``ignored``) are skipped; a key that both
    networks, or this one (``fixed``), implement at one value only must hold that value;
    ``attention_head_dim`` and ``num_embeddings`` become ``heads`` and ``num_categories``;
    every other key must be one of ``fields``. ``family`` names the model in error messages.
    """
    fixed = {**_UNET_FIXED_ARGS, **fixed}
    ignored = {*_UNET_IGNORED_ARGS, *ignored}
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
        key = _RENAMED_ARGS.get(key, key)
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
