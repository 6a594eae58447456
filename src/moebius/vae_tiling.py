"""VAE tiles that normalise with the whole image's statistics.

For inputs larger than a tile, diffusers' ``AutoencoderKL`` runs its encoder or decoder on
overlapping tiles and cross-fades them. Every GroupNorm inside then normalises each tile with
that tile's own mean and variance, which differ from tile to tile (a tile of sky against a tile
of grass), so the same content comes out with another brightness and contrast on either side of
a seam, and the cross-fade only smears the step.

Here each tiled call first runs the network once on the whole input shrunk to fit a single
tile (area averaging), records every GroupNorm's per-sample, per-group mean and variance, and
then runs diffusers' tiles with every GroupNorm normalising by those whole-image statistics.
Tiles then agree wherever their content does; what remains at the seams is what a tile cannot
see (the receptive field beyond the overlap, attention over the whole map) plus the variance
the shrunken input lacks. ``moebius bench`` reports the tiled decode's error against decoding
whole.
"""

import contextlib
import functools
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


def share_statistics_across_tiles(vae) -> None:
    """Make ``vae``'s tiled encode and decode (used once tiling is enabled and the input is
    larger than a tile) normalise every tile with whole-image GroupNorm statistics. Calling
    it again changes nothing."""
    if getattr(vae, "_tiles_share_statistics", False):
        return
    vae._tiles_share_statistics = True
    tiled_encode, tiled_decode = vae._tiled_encode, vae.tiled_decode

    def encode(x: torch.Tensor) -> torch.Tensor:
        def whole(small):
            moments = vae.encoder(small)
            return vae.quant_conv(moments) if vae.quant_conv is not None else moments

        with _whole_image_statistics(vae.encoder, whole, x, vae.tile_sample_min_size):
            return tiled_encode(x)

    def decode(z: torch.Tensor, return_dict: bool = True):
        def whole(small):
            if vae.post_quant_conv is not None:
                small = vae.post_quant_conv(small)
            return vae.decoder(small)

        with _whole_image_statistics(vae.decoder, whole, z, vae.tile_latent_min_size):
            return tiled_decode(z, return_dict=return_dict)

    vae._tiled_encode, vae.tiled_decode = encode, decode


@contextlib.contextmanager
def _whole_image_statistics(network: nn.Module, run, x: torch.Tensor, tile: int) -> Iterator[None]:
    norms = [m for m in network.modules() if isinstance(m, nn.GroupNorm)]
    statistics: dict[nn.GroupNorm, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(module, inputs):
        statistics[module] = _group_statistics(inputs[0], module.num_groups)

    shrink = math.ceil(max(x.shape[-2:]) / tile)
    small = F.interpolate(x, size=[max(1, s // shrink) for s in x.shape[-2:]], mode="area")
    hooks = [norm.register_forward_pre_hook(record) for norm in norms]
    try:
        run(small)
    finally:
        for hook in hooks:
            hook.remove()
    for norm in norms:
        norm.forward = functools.partial(_normalise, norm, *statistics[norm])
    try:
        yield
    finally:
        for norm in norms:
            del norm.forward


def _group_statistics(x: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (biased) variance of each sample's channel groups, in float32: (N, G) each."""
    grouped = x.float().reshape(x.shape[0], groups, -1)
    variance, mean = torch.var_mean(grouped, dim=2, unbiased=False)
    return mean, variance


def _normalise(
    norm: nn.GroupNorm, mean: torch.Tensor, variance: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    """GroupNorm of ``x`` with the given statistics, as one per-channel scale and shift (which
    keeps ``x``'s memory format)."""
    per_group = x.shape[1] // norm.num_groups
    inverse = (variance + norm.eps).rsqrt().repeat_interleave(per_group, dim=1)
    mean = mean.repeat_interleave(per_group, dim=1)
    scale = inverse if norm.weight is None else inverse * norm.weight.float()
    shift = -mean * scale if norm.bias is None else norm.bias.float() - mean * scale
    spatial = (1,) * (x.ndim - 2)
    return torch.addcmul(
        shift.view(*shift.shape, *spatial).to(x.dtype),
        x,
        scale.view(*scale.shape, *spatial).to(x.dtype),
    )
