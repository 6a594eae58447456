"""The Moebius student: a three-level "LλMI" U-Net of depthwise residual blocks and lambda layers.

Every layer is a DW residual block followed by an LλMI transformer block
(Local-λ → Interactive-λ → MixFFN). Levels run at latent/1, /2, /4; there is
no mid block. Skips follow the diffusers rule: the stack holds ``conv_in``'s
output, every down layer's output and every downsampler's output; each up
layer pops one and concatenates it after its input.
"""

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from moebius.errors import ConfigError
from moebius.models.authors_args import latent_size, one_per_model, read_authors_args
from moebius.models.outputs import ModelOutput
from moebius.nn import Downsample, DWConv, DWResBlock, TimestepEmbedding, Transformer2D, Upsample
from moebius.nn.fusion import group_norm, set_plain
from moebius.nn.initialisation import init_linear_layers
from moebius.nn.lambda_block import LambdaBlock

AUTHORS_MODEL_TYPE = "UNet2DLambdaDWConvMixFFNConditionModel_prune_down_mid_up_block_8x8"
AUTHORS_DOWN_BLOCK, AUTHORS_UP_BLOCK = "DWMixTFDownBlock2D", "DWMixTFUpBlock2D"

# Constructor arguments the student implements at one value only, besides those both networks
# fix (moebius.models.authors_args).
_FIXED_AUTHORS_ARGS = {
    "mid_block_type": None,
    "norm_eps": 1e-5,
    "use_lambda_cross_attn": True,
    "use_local_self_attn": True,
}
# Without effect here: there is no mid block, and the authors' code passes the MixFFN ratio on
# to no block (it is always 2.5 there).
_IGNORED_AUTHORS_ARGS = {"mid_block_scale_factor", "mix_mlp_ratio"}
_AUTHORS_FIELDS = {
    "in_channels",
    "out_channels",
    "block_out_channels",
    "layers_per_block",
    "heads",
    "cross_attention_dim",
    "encoder_hid_dim",
    "num_categories",
    "sample_size",
    "norm_num_groups",
    "conv_in_kernel",
    "conv_out_kernel",
}
# Fields that must be positive integers (block_out_channels: each width).
_COUNTS = _AUTHORS_FIELDS - {"block_out_channels"} | {"context_tokens", "local_receptive_field"}


@dataclass
class MoebiusConfig:
    """Everything that shapes the student. ``sample_size`` is the latent side the
    Interactive-λ position tables were trained for (image side / 8)."""

    model_type: str = "moebius"
    in_channels: int = 9
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280)
    layers_per_block: int = 2
    heads: int = 8
    cross_attention_dim: int = 768
    encoder_hid_dim: int = 3072
    num_categories: int = 20
    context_tokens: int = 10
    mix_mlp_ratio: float = 2.5
    sample_size: int = 64
    norm_num_groups: int = 32
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3
    local_receptive_field: int = 15
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.block_out_channels, (list, tuple)) or not self.block_out_channels:
            raise ConfigError(
                f"block_out_channels must list the level widths, got {self.block_out_channels!r}"
            )
        self.block_out_channels = tuple(self.block_out_channels)
        counts = [(name, getattr(self, name)) for name in sorted(_COUNTS)]
        counts += [("block_out_channels", width) for width in self.block_out_channels]
        for name, value in counts:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(
                    f"Moebius option {name} must be a positive integer, got {value!r}"
                )
        for width in self.block_out_channels:
            if width % self.norm_num_groups:
                raise ConfigError(
                    f"Moebius width {width} does not split into {self.norm_num_groups} norm groups"
                )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_authors_dict(cls, document: dict) -> "MoebiusConfig":
        """The authors' constructor arguments: their ``config.json``, or the ``model`` section of
        their YAML plus ``sample_size`` (the latent side). Arguments left out take the released
        student's values. ``attention_head_dim`` there is the number of heads (a diffusers quirk),
        and ``mix_mlp_ratio`` is ignored because the authors' code always uses 2.5."""
        document = dict(document)
        block_types = [
            (document.pop("down_block_types", None), AUTHORS_DOWN_BLOCK),
            (document.pop("up_block_types", None), AUTHORS_UP_BLOCK),
        ]
        fields = read_authors_args(
            document,
            "Moebius",
            _AUTHORS_FIELDS,
            _FIXED_AUTHORS_ARGS,
            _IGNORED_AUTHORS_ARGS,
        )
        for key in ("heads", "layers_per_block", "cross_attention_dim"):
            one_per_model(fields, key, "Moebius")
        config = cls(**fields)
        levels = len(config.block_out_channels)
        for given, kind in block_types:
            if given is not None and list(given) != [kind] * levels:
                raise ConfigError(
                    f"Moebius needs {kind} at each of its {levels} levels, got {given!r}"
                )
        return config

    @classmethod
    def from_authors_yaml(cls, document: dict) -> "MoebiusConfig":
        """The authors' training YAML: ``model`` holds the constructor arguments and
        ``data.image_size`` / the VAE factor is the latent size."""
        return cls.from_authors_dict({**document["model"], "sample_size": latent_size(document)})


def _lambda_transformer(cfg: MoebiusConfig, channels: int, level: int) -> Transformer2D:
    side = cfg.sample_size // 2**level
    block = LambdaBlock(
        channels,
        cfg.cross_attention_dim,
        cfg.context_tokens,
        side * side,
        cfg.heads,
        cfg.mix_mlp_ratio,
        cfg.local_receptive_field,
    )
    return Transformer2D(channels, [block], cfg.norm_num_groups)


class DownLevel(nn.Module):
    def __init__(
        self,
        cfg: MoebiusConfig,
        in_channels: int,
        out_channels: int,
        level: int,
        temb_channels: int,
        downsample: bool,
    ):
        super().__init__()
        widths = [in_channels] + [out_channels] * (cfg.layers_per_block - 1)
        self.resnets = nn.ModuleList(
            DWResBlock(w, out_channels, temb_channels, cfg.norm_num_groups) for w in widths
        )
        self.attentions = nn.ModuleList(
            _lambda_transformer(cfg, out_channels, level) for _ in widths
        )
        self.downsamplers = nn.ModuleList([Downsample(out_channels)] if downsample else [])

    def forward(
        self, h: torch.Tensor, temb: torch.Tensor, context: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for resnet, attention in zip(self.resnets, self.attentions, strict=True):
            h = attention(resnet(h, temb), context)
            skips.append(h)
        for downsampler in self.downsamplers:
            h = downsampler(h)
            skips.append(h)
        return h, skips


class UpLevel(nn.Module):
    def __init__(
        self,
        cfg: MoebiusConfig,
        prev_channels: int,
        out_channels: int,
        deepest_skip_channels: int,
        level: int,
        temb_channels: int,
        upsample: bool,
    ):
        super().__init__()
        layers = cfg.layers_per_block + 1
        skip_widths = [out_channels] * (layers - 1) + [deepest_skip_channels]
        in_widths = [prev_channels] + [out_channels] * (layers - 1)
        self.resnets = nn.ModuleList(
            DWResBlock(i + s, out_channels, temb_channels, cfg.norm_num_groups)
            for i, s in zip(in_widths, skip_widths, strict=True)
        )
        self.attentions = nn.ModuleList(
            _lambda_transformer(cfg, out_channels, level) for _ in range(layers)
        )
        self.upsamplers = nn.ModuleList([Upsample(out_channels)] if upsample else [])

    def forward(
        self, h: torch.Tensor, skips: list[torch.Tensor], temb: torch.Tensor, context: torch.Tensor
    ) -> torch.Tensor:
        """Consumes this level's entries from the end of the shared ``skips`` stack."""
        for resnet, attention in zip(self.resnets, self.attentions, strict=True):
            h = attention(resnet(torch.cat([h, skips.pop()], dim=1), temb), context)
        for upsampler in self.upsamplers:
            h = upsampler(h, size=skips[-1].shape[2:] if skips else None)
        return h


class MoebiusUNet(nn.Module):
    """ε-prediction U-Net. ``forward(x, timesteps, context)`` with context the raw
    (B, tokens, encoder_hid_dim) LCG embeddings; ``encoder_hid_proj`` maps them to
    the cross-attention width."""

    def __init__(self, config: MoebiusConfig):
        super().__init__()
        self.config = cfg = config
        widths = cfg.block_out_channels
        temb_channels = 4 * widths[0]
        self.conv_in = DWConv(cfg.in_channels, widths[0], cfg.conv_in_kernel, residual=False)
        self.time_embedding = TimestepEmbedding(widths[0], temb_channels)
        self.encoder_hid_proj = nn.Linear(cfg.encoder_hid_dim, cfg.cross_attention_dim)

        last = len(widths) - 1
        self.down_blocks = nn.ModuleList(
            DownLevel(cfg, widths[max(i - 1, 0)], widths[i], i, temb_channels, i < last)
            for i in range(len(widths))
        )
        self.up_blocks = nn.ModuleList()
        for j in range(len(widths)):
            level = last - j
            prev = widths[min(level + 1, last)]
            self.up_blocks.append(
                UpLevel(
                    cfg,
                    prev,
                    widths[level],
                    widths[max(level - 1, 0)],
                    level,
                    temb_channels,
                    level > 0,
                )
            )

        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, widths[0], eps=1e-5)
        self.conv_out = DWConv(widths[0], cfg.out_channels, cfg.conv_out_kernel, residual=False)
        self.plain = False
        self.export = False  # tracing for other runtimes: see forward
        init_linear_layers(self)

    def set_plain(self, plain: bool = True) -> "MoebiusUNet":
        """Run the plain (formula-literal, NCHW) path instead of the fast one; see moebius.nn.fusion."""
        return set_plain(self, plain)

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor
    ) -> ModelOutput:
        # Channels-last maps make every map ↔ token reshape in the blocks a free view. A graph
        # traced for another runtime has no memory formats: there the maps stay NCHW, so that
        # the norms trace as plain group normalisations rather than channels-last rewrites.
        fast = not (self.plain or self.training or self.export)
        dtype = self.conv_in.conv_dw.weight.dtype
        if fast and dtype == torch.bfloat16 and x.device.type in ("cpu", "cuda"):
            # bfloat16 weights run natively: activations stay bfloat16 from op to op, and the
            # norms and softmax accumulate their statistics in float32 themselves. Autocast
            # would instead cast every product's input and send norms to float32 and back.
            with torch.autocast(x.device.type, enabled=False):
                return self._forward(x.to(dtype), timesteps, context.to(dtype), fast)
        return self._forward(x, timesteps, context, fast)

    def _forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, fast: bool
    ) -> ModelOutput:
        if fast:
            x = x.contiguous(memory_format=torch.channels_last)
        temb = self.time_embedding(timesteps, x.dtype)
        context = self.encoder_hid_proj(context)

        h = self.conv_in(x)
        skips = [h]
        block_outputs = []
        for down in self.down_blocks:
            h, level_skips = down(h, temb, context)
            skips.extend(level_skips)
            block_outputs.append(h)
        for up in self.up_blocks:
            h = up(h, skips, temb, context)
            block_outputs.append(h)

        sample = self.conv_out(group_norm(h, self.conv_norm_out, activation="silu"))
        if fast:
            sample = sample.contiguous()
        return ModelOutput(sample=sample, block_outputs=block_outputs)
