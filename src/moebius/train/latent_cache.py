"""A sharded on-disk cache of VAE latents, so training never runs the VAE encoder.

What is stored, and why
-----------------------
The model input needs two latents per sample: the full image's and the *masked* image's
(``image · (1 − mask)`` encoded, or the image with OpenCV's fill in the hole for a model
trained on that, see :func:`masked_images`). The second depends on the mask, so it cannot be cached
once per image. We cache ``variants`` independent draws per image; each variant fixes one
random crop/flip and one mask (drawn exactly like the pixel-space dataset, dilation
included) and stores

* ``moments``        (8, h, w): mean ‖ log-variance of the VAE posterior of the crop,
* ``masked_moments`` (8, h, w): the same for the masked crop,
* ``mask``           (1, h, w) uint8: the mask resized to latent size (nearest), 1 = hole.

Posterior moments rather than samples are cached so training still draws a fresh latent
``(mean + std·ε)·scaling_factor`` every step, as the authors' on-the-fly encoding does.
At train time each sample picks one of its variants at random. The price is mask variety:
``variants`` masks per image instead of a fresh one per step (8–16 is a reasonable
trade-off; set ``data.cache: null`` to encode on the fly with unlimited masks).

Layout: ``index.json`` (format, sizes, scaling factor, records, shard list) and
``shard-00000.safetensors`` … each holding stacked tensors for ``shard_size`` images
(``moments``/``masked_moments`` (n, V, 8, h, w), ``mask`` (n, V, 1, h, w),
``input_ids`` (n, 10)). Shards and the index are written atomically; the index last.
"""

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from moebius.compositing import opencv_fill
from moebius.errors import ConfigError, InputError
from moebius.files import atomic_write
from moebius.models.lcg import category_ids
from moebius.nn.adopt import adopt
from moebius.settings import Prefill, parse_masked_image_fill
from moebius.train.data import MaskSampler, Record, _open, random_crop, sample_rng

FORMAT = "moebius-latent-cache"
VERSION = 1
INDEX_NAME = "index.json"


@torch.no_grad()
def encode_moments(vae: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] → (B, 2C, H/8, W/8) posterior mean ‖ log-variance (float32,
    or float64 for a float64 VAE)."""
    posterior = vae.encode(images.to(vae.dtype)).latent_dist
    moments = torch.cat([posterior.mean, posterior.logvar], dim=1)
    return moments if moments.dtype == torch.float64 else moments.float()


def sample_latents(
    moments: torch.Tensor, noise: torch.Tensor, scaling_factor: float
) -> torch.Tensor:
    """A posterior sample ``(mean + exp(logvar/2)·noise)·scaling_factor`` (diffusers clamps
    the log-variance to [-30, 20]; so do we)."""
    mean, logvar = moments.chunk(2, dim=1)
    return (mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * noise) * scaling_factor


def masked_images(images: torch.Tensor, masks: torch.Tensor, fill: str = "none") -> torch.Tensor:
    """The images (B, 3, H, W) in [−1, 1] a model is conditioned on: the hole (``masks`` (B, 1,
    H, W), 1 = hole) zeroed, or with ``fill`` (``telea``/``ns``) holding OpenCV's fill of it
    computed on the 8-bit pixels, as the pipeline does at inference."""
    method = parse_masked_image_fill(fill, ConfigError)
    if method is Prefill.NONE:
        return images * (1 - masks)
    pixels = ((images.float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    holes = (masks[:, 0].cpu() > 0.5).numpy()
    filled = [
        opencv_fill(np.ascontiguousarray(p.permute(1, 2, 0).numpy()), h, method)
        for p, h in zip(pixels, holes, strict=True)
    ]
    result = torch.from_numpy(np.stack(filled)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return result.to(images.device, images.dtype)


def latent_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pixel mask (B, 1, H, W) → latent size with nearest interpolation, as the authors."""
    return F.interpolate(mask.float(), size=size, mode="nearest")


def write_latent_cache(
    records: Sequence[Record],
    vae: torch.nn.Module,
    out_dir: str | os.PathLike,
    size: int,
    masks: MaskSampler,
    variants: int = 8,
    seed: int = 0,
    shard_size: int = 1024,
    batch_size: int = 8,
    scaling_factor: float = 0.13025,
    flip: bool = True,
    progress: bool = True,
    short_side: tuple[int, int] | None = None,
    masked_image_fill: str = "none",
) -> Path:
    """Encode every record ``variants`` times into ``out_dir``; returns the index path. The
    masked images hold ``masked_image_fill`` in the hole (:func:`masked_images`). The VAE
    is adopted (:func:`moebius.nn.adopt.adopt`, in place: same weights and results) and fed
    channels-last batches, so it runs on the kernels fastest on this machine; PyTorch's own
    GroupNorm would lose precision on channels-last maps, the adopted one does not."""
    parse_masked_image_fill(masked_image_fill, ConfigError)
    vae = adopt(vae)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = next(vae.parameters()).device
    shards = []
    bar = tqdm(total=len(records) * variants, desc="encoding", unit="img", disable=not progress)
    for shard_start in range(0, len(records), shard_size):
        chunk = records[shard_start : shard_start + shard_size]
        items = []  # (image, masked image, mask) per (record, variant), record-major
        for offset, record in enumerate(chunk):
            image = _open(record.image, "RGB")
            dataset_mask = _open(record.mask, "L") if record.mask is not None else None
            for v in range(variants):
                rng = sample_rng(seed, shard_start + offset, v)
                pixels, hole = random_crop(image, dataset_mask, size, rng, flip, short_side)
                hole = masks(size, size, rng, hole)
                x = torch.from_numpy(pixels).permute(2, 0, 1).float() / 127.5 - 1.0
                m = torch.from_numpy(hole)[None].float()
                items.append((x, masked_images(x[None], m[None], masked_image_fill)[0], m))
        moments, masked, lat_masks = [], [], []
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            x, xm, m = (torch.stack(t).to(device) for t in zip(*batch, strict=True))
            x, xm = (t.contiguous(memory_format=torch.channels_last) for t in (x, xm))
            moments.append(encode_moments(vae, x).cpu())
            masked.append(encode_moments(vae, xm).cpu())
            lat_masks.append(latent_mask(m, moments[-1].shape[2:]).to(torch.uint8).cpu())
            bar.update(len(batch))
        n = len(chunk)
        tensors = {
            "moments": torch.cat(moments).reshape(n, variants, *moments[0].shape[1:]),
            "masked_moments": torch.cat(masked).reshape(n, variants, *masked[0].shape[1:]),
            "mask": torch.cat(lat_masks).reshape(n, variants, *lat_masks[0].shape[1:]),
            "input_ids": torch.stack([category_ids(r.prompt, 1)[0] for r in chunk]),
        }
        name = f"shard-{len(shards):05d}.safetensors"
        _save(out_dir / name, tensors)
        shards.append({"file": name, "count": n})
    bar.close()
    latent_side = size // 8
    index = {
        "format": FORMAT,
        "version": VERSION,
        "image_size": size,
        "latent_size": [latent_side, latent_side],
        "variants": variants,
        "scaling_factor": scaling_factor,
        "seed": seed,
        "masked_image_fill": masked_image_fill,
        "shards": shards,
        "records": [{"image": str(r.image), "prompt": r.prompt} for r in records],
    }
    atomic_write(out_dir / INDEX_NAME, lambda tmp: tmp.write_text(json.dumps(index, indent=1)))
    return out_dir / INDEX_NAME


def _save(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))


class LatentCache(torch.utils.data.Dataset):
    """Reads a cache written by :func:`write_latent_cache`; shards are memory-mapped lazily.

    Indexed like :class:`moebius.train.data.InpaintingDataset` by ``(index, epoch, position)``;
    the sample's generator picks one cached variant. Returns ``moments``, ``masked_moments``
    (8, h, w), ``mask`` (1, h, w) float with 1 = hole, and ``input_ids`` (10,).
    """

    def __init__(self, directory: str | os.PathLike, seed: int = 0):
        self.directory = Path(directory)
        index_path = self.directory / INDEX_NAME
        if not index_path.is_file():
            raise InputError(f"no latent cache index at {index_path} (run `moebius cache-latents`)")
        try:
            self.index = json.loads(index_path.read_text())
        except ValueError as exc:
            raise InputError(f"corrupt latent cache index {index_path}: {exc}") from exc
        if self.index.get("format") != FORMAT or self.index.get("version") != VERSION:
            raise InputError(f"{index_path} is not a {FORMAT} v{VERSION} index")
        self.seed = seed
        self.variants = int(self.index["variants"])
        self.scaling_factor = float(self.index["scaling_factor"])
        self._locate = []  # global index → (shard number, row)
        for number, shard in enumerate(self.index["shards"]):
            self._locate.extend((number, row) for row in range(shard["count"]))
        self._handles: dict[int, object] = {}

    def __len__(self) -> int:
        return len(self._locate)

    def _shard(self, number: int):
        if number not in self._handles:
            from safetensors import safe_open

            path = self.directory / self.index["shards"][number]["file"]
            try:
                self._handles[number] = safe_open(str(path), framework="pt")
            except Exception as exc:
                raise InputError(f"cannot open cache shard {path}: {exc}") from exc
        return self._handles[number]

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, torch.Tensor]:
        index, epoch, position = key
        number, row = self._locate[index]
        variant = int(sample_rng(self.seed, epoch, position).integers(self.variants))
        shard = self._shard(number)

        def pick(name: str) -> torch.Tensor:
            return shard.get_slice(name)[row : row + 1, variant : variant + 1][0, 0]

        return {
            "moments": pick("moments"),
            "masked_moments": pick("masked_moments"),
            "mask": pick("mask").float(),
            "input_ids": shard.get_slice("input_ids")[row : row + 1][0],
        }

    def __getstate__(self):  # DataLoader workers re-open shards themselves
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state
