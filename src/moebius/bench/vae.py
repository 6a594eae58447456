"""The VAE in the benchmark: what its fast path's choices buy, and what bfloat16 and tiled
decoding cost in accuracy.

Speed is measured on the real SDXL VAE configuration (random weights: speed does not depend on
them); accuracy on the trained VAE bundled with the demo model, on a real photo, because errors
do depend on weights (it is small against SDXL's 128–512 channels, but trained).
"""

import copy
import math
from collections.abc import Callable

import numpy as np
import torch

from moebius.bench.flops import measured_flops
from moebius.nn.adopt import adopt


def demo_vae(device: torch.device):
    """The trained VAE of the bundled demo model, on this package's kernels."""
    from diffusers import AutoencoderKL

    from moebius.weights import BUNDLED, DEMO

    vae = AutoencoderKL.from_pretrained(BUNDLED[DEMO] / "vae", low_cpu_mem_usage=False)
    return adopt(vae.eval().to(device))


def _widths(vae) -> str:
    widths = vae.config.block_out_channels
    return f"{min(widths)}–{max(widths)}"


def photo(size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """scikit-image's astronaut (public domain) at ``size`` (width, height), in [−1, 1]."""
    from PIL import Image
    from skimage import data

    image = Image.fromarray(data.astronaut()).resize(size, Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.asarray(image, np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    return pixels.to(device).contiguous(memory_format=torch.channels_last)


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """Decoder output → 8-bit pixels, as the pipeline makes them."""
    return ((pixels.float() + 1) / 2).clamp(0, 1).mul(255).to(torch.uint8)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio of two 8-bit images, in dB (inf when equal)."""
    mse = (a.double() - b.double()).square().mean().item()
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def _compare(reference: torch.Tensor, other: torch.Tensor) -> dict:
    a, b = to_uint8(reference), to_uint8(other)
    return {"psnr_db": psnr(a, b), "max_abs": int((a.int() - b.int()).abs().max().item())}


def _cast(vae, dtype: torch.dtype):
    return vae if dtype == torch.float32 else copy.deepcopy(vae).to(dtype)


def decoded_difference(
    reference_latents: torch.Tensor, latents: torch.Tensor, dtype: torch.dtype, device
) -> dict:
    """The images two final latents decode to (scaled latents, as the sampler ends), each the
    way the pipeline runs it: the float32 one by the float32 VAE, the other in ``dtype``."""
    vae = demo_vae(device)
    low = _cast(vae, dtype)
    factor = vae.config.scaling_factor
    channels_last = torch.channels_last
    with torch.inference_mode():
        reference = vae.decode((reference_latents / factor).contiguous(memory_format=channels_last))
        other = low.decode((latents / factor).to(dtype).contiguous(memory_format=channels_last))
    return _compare(reference.sample, other.sample)


def errors(size: tuple[int, int], dtype: torch.dtype, device: torch.device) -> dict:
    """The demo VAE on a photo: its ``dtype`` encoder against float32 (mean |Δ| of the latent
    means), its ``dtype`` decoder against float32, and decoding in tiles of half the size
    against decoding whole: diffusers' tiling (tiles blended over a quarter of their side) as
    it is, and with whole-image GroupNorm statistics as the pipeline runs it
    (:mod:`moebius.vae_tiling`)."""
    from moebius.vae_tiling import share_statistics_across_tiles

    vae = demo_vae(device)
    low = _cast(vae, dtype)
    pixels = photo(size, device)
    with torch.inference_mode():
        latents = vae.encode(pixels).latent_dist.mean
        low_latents = low.encode(pixels.to(dtype)).latent_dist.mean.float()
        whole = vae.decode(latents).sample
        decoded_low = low.decode(latents.to(dtype)).sample
        tile = min(size) // 2
        vae.enable_tiling()
        vae.tile_sample_min_size = tile
        vae.tile_latent_min_size = tile // 8
        plain_tiles = vae.decode(latents).sample
        share_statistics_across_tiles(vae)
        tiled = vae.decode(latents).sample
    return {
        "vae": f"moebius-demo (trained, {_widths(vae)} channels)",
        "size": list(size),
        "dtype": str(dtype).removeprefix("torch."),
        "encode_latent_mean_abs": (low_latents - latents).abs().mean().item(),
        "latent_ref_mean_abs": latents.abs().mean().item(),
        "decode": _compare(whole, decoded_low),
        "tile": tile,
        "tiled_decode": _compare(whole, tiled),
        "tiled_decode_plain": _compare(whole, plain_tiles),
    }


def _runs(vae, pair: torch.Tensor, latent: torch.Tensor) -> dict[str, Callable]:
    def encode(x):
        return vae.encode(x).latent_dist.mean

    return {
        "encode pair, one batch": lambda: encode(pair),
        "encode pair, two batches": lambda: [encode(pair[i : i + 1]) for i in range(2)],
        "decode, channels-last": lambda: (
            vae.decode(latent.contiguous(memory_format=torch.channels_last)).sample
        ),
        "decode, channels-first": lambda: vae.decode(latent.contiguous()).sample,
    }


def work(vae, size: tuple[int, int]) -> dict[str, float]:
    """GFLOP of each timed run: what bounds the VAE's share of an inpainting, whatever its
    kernels do. Counted on the meta device, from shapes alone, where the mid-block attention
    decomposes into products the counter sees (the CPU's fused attention kernel it misses)."""
    width, height = size
    meta = copy.deepcopy(vae).to("meta")
    pair = torch.empty(2, 3, height, width, device="meta")
    latent = torch.empty(1, 4, height // 8, width // 8, device="meta")
    runs = _runs(meta, pair.contiguous(memory_format=torch.channels_last), latent)
    return {run: measured_flops(call) / 1e9 for run, call in runs.items()}


def timings(
    vae, size: tuple[int, int], dtype: torch.dtype, in_turns: Callable, device
) -> list[dict]:
    """Seconds per call, taken in turns: the image and the masked image encoded as one batch
    against one at a time, and decoding a channels-last against a channels-first latent."""
    vae = _cast(vae, dtype)
    width, height = size
    generator = torch.Generator().manual_seed(0)
    pair = (torch.rand(2, 3, height, width, generator=generator) * 2 - 1).to(device, dtype)
    pair = pair.contiguous(memory_format=torch.channels_last)
    latent = torch.randn(1, 4, height // 8, width // 8, generator=generator).to(device, dtype)
    runs = _runs(vae, pair, latent)
    with torch.inference_mode():
        for run in runs.values():
            run()  # warm, and tune the engines for these shapes
        times = in_turns(list(runs.values()))
    name = str(dtype).removeprefix("torch.")
    return [
        {"run": run, "dtype": name, "size": list(size), "median_s": float(np.median(seconds))}
        for run, seconds in zip(runs, times, strict=True)
    ]
