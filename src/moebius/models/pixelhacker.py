"""PixelHacker, the teacher: an SD-1.x-shaped U-Net whose self-attention is Gated Linear Attention.

Four levels (320, 640, 1280, 1280 channels at full size), each with ResNet blocks and,
where the block type says so, a transformer (GLA self-attention over row-major tokens,
softmax cross-attention to the LCG context, GEGLU); a mid block; up levels with one extra
layer each that consume the skip stack (diffusers' rule, as in the student). Key names
are those of the released ``hustvl/PixelHacker`` checkpoints.
"""

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from moebius.errors import ConfigError
from moebius.models.authors_args import latent_size, one_per_model, read_authors_args
from moebius.models.outputs import ModelOutput
from moebius.nn import Downsample, TimestepEmbedding, Transformer2D, Upsample
from moebius.nn.attention import GLATransformerBlock
from moebius.nn.initialisation import init_linear_layers
from moebius.nn.resnet import ResnetBlock

CROSS_DOWN, PLAIN_DOWN = "CrossAttnDownBlock2D", "DownBlock2D"
CROSS_UP, PLAIN_UP = "CrossAttnUpBlock2D", "UpBlock2D"

# Constructor arguments the teacher implements at one value only, besides those both networks
# fix (moebius.models.authors_args).
_FIXED_AUTHORS_ARGS = {
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "mid_block_scale_factor": 1,
    "use_gated_cross_attn": False,
}
_DIFFUSERS_DEFAULTS = {  # UNet2DConditionModel defaults the authors' YAML relies on
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": (CROSS_DOWN, CROSS_DOWN, CROSS_DOWN, PLAIN_DOWN),
    "up_block_types": (PLAIN_UP, CROSS_UP, CROSS_UP, CROSS_UP),
}


@dataclass
class PixelHackerConfig:
    """Everything that shapes the teacher. ``sample_size`` is the trained latent side
    (image side / 8); the network itself runs any size."""

    model_type: str = "pixelhacker"
    in_channels: int = 9
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = _DIFFUSERS_DEFAULTS["block_out_channels"]
    down_block_types: tuple[str, ...] = _DIFFUSERS_DEFAULTS["down_block_types"]
    up_block_types: tuple[str, ...] = _DIFFUSERS_DEFAULTS["up_block_types"]
    layers_per_block: int = 2
    heads: int = 8
    cross_attention_dim: int = 768
    encoder_hid_dim: int = 3072
    num_categories: int = 20
    sample_size: int = 64
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3
    ff_mult: int = 4
    gla_expand_k: float = 0.5
    gla_expand_v: float = 1.0
    gla_gate_low_rank_dim: int = 16
    gla_gate_logit_normalizer: float = 16.0
    gla_norm_eps: float = 1e-6

    def __post_init__(self):
        self.block_out_channels = tuple(self.block_out_channels)
        self.down_block_types = tuple(self.down_block_types)
        self.up_block_types = tuple(self.up_block_types)
        levels = len(self.block_out_channels)
        if len(self.down_block_types) != levels or len(self.up_block_types) != levels:
            raise ConfigError(
                f"PixelHacker needs one down and one up block type per level ({levels})"
            )
        for kind, allowed in (
            (self.down_block_types, (CROSS_DOWN, PLAIN_DOWN)),
            (self.up_block_types, (CROSS_UP, PLAIN_UP)),
        ):
            unknown = sorted(set(kind) - set(allowed))
            if unknown:
                raise ConfigError(f"unsupported PixelHacker block types {unknown}")
        for width in self.block_out_channels:
            gla_widths = (int(width * self.gla_expand_k), int(width * self.gla_expand_v))
            if width % self.norm_num_groups or any(w % self.heads for w in gla_widths):
                raise ConfigError(
                    f"PixelHacker width {width} does not split into {self.norm_num_groups} "
                    f"norm groups and {self.heads} GLA heads"
                )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_authors_dict(cls, document: dict) -> "PixelHackerConfig":
        """The authors' diffusers-style constructor arguments (``PixelHacker(**model_config)``)."""
        # diffusers turns a given encoder_hid_dim without a type into the text_proj Linear.
        hid_type = document.get("encoder_hid_dim_type") or "text_proj"
        fields = read_authors_args(
            {**document, "encoder_hid_dim_type": hid_type},
            "PixelHacker",
            set(cls.__dataclass_fields__) - {"model_type"},
            _FIXED_AUTHORS_ARGS,
        )
        one_per_model(fields, "heads", "PixelHacker")
        if fields.get("encoder_hid_dim", 3072) is None:
            raise ConfigError("PixelHacker needs encoder_hid_dim (the LCG embedding width)")
        return cls(**fields)

    @classmethod
    def from_authors_yaml(cls, document: dict) -> "PixelHackerConfig":
        """The authors' training YAML: ``model`` holds constructor arguments (diffusers
        defaults for the rest), ``data.image_size`` / the VAE factor is the latent size."""
        return cls.from_authors_dict({**document["model"], "sample_size": latent_size(document)})


def _transformer(cfg: PixelHackerConfig, channels: int) -> Transformer2D:
    block = GLATransformerBlock(
        channels,
        cfg.cross_attention_dim,
        cfg.heads,
        cfg.ff_mult,
        expand_k=cfg.gla_expand_k,
        expand_v=cfg.gla_expand_v,
        gate_low_rank_dim=cfg.gla_gate_low_rank_dim,
        gate_logit_normalizer=cfg.gla_gate_logit_normalizer,
        norm_eps=cfg.gla_norm_eps,
    )
    return Transformer2D(channels, [block], cfg.norm_num_groups)


class DownBlock(nn.Module):
    """``layers_per_block`` × (ResNet [→ transformer]) [→ downsampler]; every output is a skip."""

    def __init__(
        self,
        cfg: PixelHackerConfig,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        cross_attention: bool,
        downsample: bool,
    ):
        super().__init__()
        widths = [in_channels] + [out_channels] * (cfg.layers_per_block - 1)
        self.resnets = nn.ModuleList(
            ResnetBlock(w, out_channels, temb_channels, cfg.norm_num_groups, cfg.norm_eps)
            for w in widths
        )
        self.attentions = nn.ModuleList(
            _transformer(cfg, out_channels) for _ in widths if cross_attention
        )
        self.downsamplers = nn.ModuleList([Downsample(out_channels)] if downsample else [])

    def forward(
        self, h: torch.Tensor, temb: torch.Tensor, context: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for i, resnet in enumerate(self.resnets):
            h = resnet(h, temb)
            if self.attentions:
                h = self.attentions[i](h, context)
            skips.append(h)
        for downsampler in self.downsamplers:
            h = downsampler(h)
            skips.append(h)
        return h, skips


class MidBlock(nn.Module):
    """ResNet → transformer → ResNet at the deepest width."""

    def __init__(self, cfg: PixelHackerConfig, channels: int, temb_channels: int):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(channels, channels, temb_channels, cfg.norm_num_groups, cfg.norm_eps)
            for _ in range(2)
        )
        self.attentions = nn.ModuleList([_transformer(cfg, channels)])

    def forward(self, h: torch.Tensor, temb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h = self.resnets[0](h, temb)
        return self.resnets[1](self.attentions[0](h, context), temb)


class UpBlock(nn.Module):
    """``layers_per_block + 1`` × (concat skip → ResNet [→ transformer]) [→ upsampler]."""

    def __init__(
        self,
        cfg: PixelHackerConfig,
        prev_channels: int,
        out_channels: int,
        deepest_skip_channels: int,
        temb_channels: int,
        cross_attention: bool,
        upsample: bool,
    ):
        super().__init__()
        layers = cfg.layers_per_block + 1
        skip_widths = [out_channels] * (layers - 1) + [deepest_skip_channels]
        in_widths = [prev_channels] + [out_channels] * (layers - 1)
        self.resnets = nn.ModuleList(
            ResnetBlock(i + s, out_channels, temb_channels, cfg.norm_num_groups, cfg.norm_eps)
            for i, s in zip(in_widths, skip_widths, strict=True)
        )
        self.attentions = nn.ModuleList(
            _transformer(cfg, out_channels) for _ in range(layers) if cross_attention
        )
        self.upsamplers = nn.ModuleList([Upsample(out_channels)] if upsample else [])

    def forward(
        self, h: torch.Tensor, skips: list[torch.Tensor], temb: torch.Tensor, context: torch.Tensor
    ) -> torch.Tensor:
        """Consumes this block's entries from the end of the shared ``skips`` stack."""
        for i, resnet in enumerate(self.resnets):
            h = resnet(torch.cat([h, skips.pop()], dim=1), temb)
            if self.attentions:
                h = self.attentions[i](h, context)
        for upsampler in self.upsamplers:
            h = upsampler(h, size=skips[-1].shape[2:] if skips else None)
        return h


class PixelHackerUNet(nn.Module):
    """ε-prediction U-Net. ``forward(x, timesteps, context)`` with context the raw
    (B, tokens, encoder_hid_dim) LCG embeddings; returns the noise prediction and the
    block outputs [down0..down3, mid, up0..up3]."""

    def __init__(self, config: PixelHackerConfig):
        super().__init__()
        self.config = cfg = config
        widths = cfg.block_out_channels
        temb_channels = 4 * widths[0]
        self.conv_in = nn.Conv2d(
            cfg.in_channels, widths[0], cfg.conv_in_kernel, padding=cfg.conv_in_kernel // 2
        )
        self.time_embedding = TimestepEmbedding(widths[0], temb_channels)
        self.encoder_hid_proj = nn.Linear(cfg.encoder_hid_dim, cfg.cross_attention_dim)

        last = len(widths) - 1
        self.down_blocks = nn.ModuleList(
            DownBlock(
                cfg,
                widths[max(i - 1, 0)],
                widths[i],
                temb_channels,
                cfg.down_block_types[i] == CROSS_DOWN,
                i < last,
            )
            for i in range(len(widths))
        )
        self.mid_block = MidBlock(cfg, widths[-1], temb_channels)
        self.up_blocks = nn.ModuleList(
            UpBlock(
                cfg,
                widths[min(last - j + 1, last)],
                widths[last - j],
                widths[max(last - j - 1, 0)],
                temb_channels,
                cfg.up_block_types[j] == CROSS_UP,
                j < last,
            )
            for j in range(len(widths))
        )
        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, widths[0], eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(
            widths[0], cfg.out_channels, cfg.conv_out_kernel, padding=cfg.conv_out_kernel // 2
        )
        init_linear_layers(self)

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor
    ) -> ModelOutput:
        temb = self.time_embedding(timesteps, x.dtype)
        context = self.encoder_hid_proj(context)

        h = self.conv_in(x)
        skips = [h]
        block_outputs = []
        for down in self.down_blocks:
            h, level_skips = down(h, temb, context)
            skips.extend(level_skips)
            block_outputs.append(h)
        h = self.mid_block(h, temb, context)
        block_outputs.append(h)
        for up in self.up_blocks:
            h = up(h, skips, temb, context)
            block_outputs.append(h)

        sample = self.conv_out(F.silu(self.conv_norm_out(h)))
        return ModelOutput(sample=sample, block_outputs=block_outputs)
