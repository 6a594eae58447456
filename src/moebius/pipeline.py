"""Inpainting pipelines: photo + mask → photo with the hole filled.

:class:`InpaintPipeline` is the one inpainting core: it prepares each photo
(:mod:`moebius.compositing`), encodes it, runs the shared sampler (:mod:`moebius.sampling`) and
pastes the result back, whatever runs the networks. :class:`MoebiusInpaintPipeline` runs them
with PyTorch. With the same weights, seed and settings it follows the authors' inference step
for step: VAE posterior samples of the image and of the masked image, noise plus noise offset,
strength, classifier-free guidance with the other LCG category as the unconditional branch in
one 2B batch, DDIM, decode; random numbers are drawn in their order (image sample, masked
sample, noise, noise offset), each image from its own generator.
"""

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from moebius.compositing import Region, paste_back, prepare
from moebius.errors import CheckpointError, InputError
from moebius.files import write_json
from moebius.image_io import to_rgb
from moebius.sampling import NoiseSchedule, Step, denoise, guided, initial_latents, make_sampler
from moebius.settings import (
    Category,
    InpaintSettings,
    PasteMode,
    Prefill,
    parse_masked_image_fill,
)
from moebius.weights import DEFAULT_REPO, DEFAULT_VARIANT, PIPELINE_FILE, locate

# VAE tiles kick in above this side (pixels); below it the VAE runs exactly as the authors'
VAE_TILE_SIZE = 1024

# diffusers-style keyword → setting
CALL_ARGUMENTS = {
    "num_inference_steps": "steps",
    "guidance_scale": "guidance",
    "strength": "strength",
    "prefill": "prefill",
    "residual_decode": "residual_decode",
    "noise_offset": "noise_offset",
    "category": "category",
    "scheduler": "scheduler",
    "strategy": "strategy",
    "image_size": "image_size",
    "crop_padding": "crop_padding",
    "mask_dilation": "dilation",
    "paste_back": "paste",
    "resize_mask": "resize_mask",
    "seed": "seed",
}


@dataclass(frozen=True)
class InpaintWarning:
    """Something the caller should know about one input (``index`` in the call's list)."""

    index: int
    code: str
    message: str

    def __str__(self) -> str:
        return f"image {self.index}: {self.message}"


@dataclass
class InpaintOutput:
    """``images``: PIL images (``output_type="pil"``) or HxWx3 uint8 arrays (``"np"``), in the
    order of the inputs; ``settings``: what produced them, the seed included."""

    images: list
    warnings: list[InpaintWarning]
    settings: InpaintSettings
    timings: dict[str, float]  # seconds: prepare, encode, denoise, decode, paste, total


@dataclass(frozen=True)
class Progress:
    """What ``on_step`` is told after every denoising step of a call."""

    done: int  # steps finished in this call, over all batches
    total: int
    step: Step  # the step just finished, within its batch
    images: tuple[int, ...]  # which inputs that batch holds


def _as_list(value) -> list:
    return [value] if isinstance(value, (Image.Image, np.ndarray)) else list(value)


def _stop_hook(cancel) -> Callable[[], bool] | None:
    """A ``threading.Event`` or any callable returning True to stop."""
    if cancel is None:
        return None
    return cancel.is_set if hasattr(cancel, "is_set") else cancel


class InpaintPipeline:
    """The inpainting core shared by every backend. Subclasses run the networks: they encode
    pixels, draw noise, predict noise and decode latents; everything else happens here."""

    schedule: NoiseSchedule
    # what a call uses where neither ``settings`` nor a keyword says otherwise: the official
    # model's defaults, or a model directory's own (``pipeline.json``'s "settings")
    default_settings: InpaintSettings = InpaintSettings()
    # What the hole of the masked image the model is conditioned on holds: zero, as the authors'
    # model was trained, or OpenCV's fill of the hole for a model trained with it (the small
    # bundled demo: its fill then has a guess of the hole's colours to refine). A property of the
    # trained weights, kept in ``pipeline.json``; not a setting a call may change.
    masked_image_fill: Prefill = Prefill.NONE

    # ------------------------------------------------------------------ what a backend provides
    @property
    def image_size(self) -> int:
        """The side (pixels) the model was trained at."""
        raise NotImplementedError

    @property
    def pixel_multiple(self) -> int:
        """Working sides must be multiples of this: VAE factor × the model's down-sampling."""
        raise NotImplementedError

    vae_scale_factor: int = 8

    def _generators(self, generator, seed: int, count: int):
        """One random stream per image (or the caller's shared one)."""
        raise NotImplementedError

    def _encode(self, pixels: np.ndarray, generators, dropped_draws: int = 0):
        """A sample of the VAE posterior of (B, 3, H, W) pixels in [−1, 1], × scaling factor,
        drawn after ``dropped_draws`` draws of the same shape that are thrown away."""
        raise NotImplementedError

    def _encode_pair(
        self, pixels: np.ndarray, masked: np.ndarray, generators, photo_needed: bool = True
    ):
        """Posterior samples of the images and of the masked images. Random numbers are drawn
        in the authors' order, the image samples of the whole batch before the masked ones, so
        a seed gives the same images however a backend batches the VAE. Without
        ``photo_needed`` (at strength 1 the sampler starts from pure noise, so the images' own
        latents would go unused) only the masked images go through the encoder, their draws
        made after the images' draws are thrown away, so a seed still gives the same images;
        None stands for the images' latents."""
        if not photo_needed:
            return None, self._encode(masked, generators, dropped_draws=1)
        return self._encode(pixels, generators), self._encode(masked, generators)

    def _randn(self, shape: tuple[int, ...], generators):
        raise NotImplementedError

    def _array(self, values: np.ndarray):
        """A NumPy array in the backend's array type and device."""
        raise NotImplementedError

    def _noise_predictor(
        self, latent_mask, masked_latents, category: Category, guidance: float
    ) -> Callable[[Any, int], Any]:
        """``predict(latents, t)`` → the guided noise estimate."""
        raise NotImplementedError

    def _decode(self, latents) -> np.ndarray:
        """Latents → (B, H, W, 3) uint8: (x + 1) / 2 clamped to [0, 1], × 255, truncated."""
        raise NotImplementedError

    def _inference(self):
        """The context the networks run in (no autograd)."""
        raise NotImplementedError

    def _synchronize(self) -> None:
        """Wait for queued device work, so that phase timings are true (asynchronous GPUs)."""

    # ------------------------------------------------------------------ progress bars
    _progress_config: dict = {}

    def set_progress_bar_config(self, **kwargs) -> None:
        self._progress_config = kwargs

    # ------------------------------------------------------------------ the call
    def settings_for(self, settings: InpaintSettings | None = None, **overrides) -> InpaintSettings:
        """``settings`` (default: :attr:`default_settings`) with the diffusers-style keywords of
        ``__call__`` applied, validated, the seed made concrete."""
        unknown = sorted(set(overrides) - set(CALL_ARGUMENTS))
        if unknown:
            raise TypeError(f"unexpected keyword argument(s): {', '.join(unknown)}")
        changes = {CALL_ARGUMENTS[k]: v for k, v in overrides.items() if v is not None}
        if isinstance(changes.get("paste"), bool):  # diffusers-style paste_back=True/False
            changes["paste"] = PasteMode.BLEND if changes["paste"] else PasteMode.NONE
        merged = replace(settings or self.default_settings, **changes)
        return InpaintSettings.from_mapping(merged.to_dict()).with_seed()

    def __call__(
        self,
        image: Image.Image | Sequence[Image.Image],
        mask_image: Image.Image | Sequence[Image.Image],
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generator=None,
        *,
        settings: InpaintSettings | None = None,
        output_type: str = "pil",
        callback_on_step_end: Callable | None = None,
        on_step: Callable[[Progress], None] | None = None,
        cancel=None,
        **overrides,
    ) -> InpaintOutput:
        """Inpaint ``image`` where ``mask_image`` is white (≥ 128).

        Settings come from ``settings`` (an :class:`~moebius.settings.InpaintSettings`,
        default: :attr:`default_settings`) and the diffusers-style keywords, which win:
        ``num_inference_steps``, ``guidance_scale``, ``strength``, ``prefill``,
        ``residual_decode``, ``noise_offset``,
        ``category``, ``scheduler``, ``strategy``, ``image_size``, ``crop_padding``,
        ``mask_dilation``, ``paste_back`` (a paste mode, or True/False), ``resize_mask``.
        ``generator``: an int seed or a generator shared by the batch, or one seed or
        generator per image;
        default: the settings' seed, one stream per image, so an image's result does not depend
        on what it is batched with. Images of equal working size are denoised as one batch. An
        empty mask returns the input unchanged, with a warning in the output.
        ``callback_on_step_end(pipe, i, t, {"latents": ...})`` runs after every step and may
        return replacement latents; ``on_step(Progress)`` reports progress over the whole call;
        ``cancel`` (a ``threading.Event`` or a callable) stops before the next step with
        :class:`~moebius.sampling.Cancelled`.
        """
        started = time.perf_counter()
        if output_type not in ("pil", "np"):
            raise InputError(f"output_type must be 'pil' or 'np', got {output_type!r}")
        if isinstance(generator, int) and not isinstance(generator, bool):
            overrides["seed"], generator = generator, None
        settings = self.settings_for(
            settings,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            **overrides,
        )
        images, masks = _as_list(image), _as_list(mask_image)
        if len(images) != len(masks):
            raise InputError(f"{len(images)} images but {len(masks)} masks")
        size = settings.image_size or self.image_size
        timings = dict.fromkeys(("prepare", "encode", "denoise", "decode", "paste"), 0.0)
        clock = time.perf_counter()
        regions = [
            prepare(im, m, settings, size, self.pixel_multiple)
            for im, m in zip(images, masks, strict=True)
        ]
        warnings = [
            InpaintWarning(i, "empty_mask", "the mask is empty; returning the input unchanged")
            for i, region in enumerate(regions)
            if region is None
        ]
        timings["prepare"] = time.perf_counter() - clock
        generators = self._generators(generator, settings.seed, len(images))
        groups: dict[tuple, list[int]] = {}
        for index, region in enumerate(regions):
            if region is not None:
                groups.setdefault(region.working_shape, []).append(index)

        total = settings.denoising_steps * len(groups)
        results: dict[int, Image.Image] = {}
        done = 0
        with tqdm(total=total, desc="denoising", **self._progress_config) as bar, self._inference():
            for members in groups.values():

                def report(step: Step, members=members):
                    nonlocal done
                    done += 1
                    bar.update(1)
                    replaced = None
                    if callback_on_step_end is not None:
                        returned = callback_on_step_end(
                            self, step.index, step.timestep, {"latents": step.latents}
                        )
                        if returned and "latents" in returned:
                            replaced = returned["latents"]
                    if on_step is not None:
                        on_step(Progress(done, total, step, tuple(members)))
                    return replaced

                group_generators = (
                    [generators[i] for i in members] if isinstance(generators, list) else generators
                )
                decoded = self._inpaint_batch(
                    [regions[i] for i in members],
                    settings,
                    group_generators,
                    report,
                    _stop_hook(cancel),
                    timings,
                )
                clock = time.perf_counter()
                for row, index in enumerate(members):
                    results[index] = paste_back(decoded[row], regions[index], settings.paste)
                timings["paste"] += time.perf_counter() - clock

        outputs = [results[i] if i in results else to_rgb(images[i]) for i in range(len(images))]
        if output_type == "np":
            outputs = [np.asarray(out) for out in outputs]
        timings["total"] = time.perf_counter() - started
        return InpaintOutput(outputs, warnings, settings, timings)

    def inpaint_regions(
        self, regions: list[Region], settings: InpaintSettings, generator=None
    ) -> np.ndarray:
        """The model's raw output for regions of one working size (from
        :func:`moebius.compositing.prepare`), (B, H, W, 3) uint8, before any paste-back."""
        settings = settings.validate().with_seed()
        generators = self._generators(generator, settings.seed, len(regions))
        with self._inference():
            return self._inpaint_batch(regions, settings, generators, None, None)

    def _inpaint_batch(
        self,
        regions: list[Region],
        settings: InpaintSettings,
        generators,
        on_step: Callable[[Step], Any] | None,
        cancelled: Callable[[], bool] | None,
        timings: dict[str, float] | None = None,
    ) -> np.ndarray:
        """Denoise regions of one working size together; → (B, H, W, 3) uint8. Adds the
        seconds of each phase to ``timings``."""
        timings = timings if timings is not None else {}
        clock = time.perf_counter()

        def lap(phase: str) -> None:
            nonlocal clock
            self._synchronize()
            now = time.perf_counter()
            timings[phase] = timings.get(phase, 0.0) + now - clock
            clock = now

        inputs = [region.model_inputs(settings.prefill) for region in regions]
        pixels = np.concatenate([image for image, _ in inputs])
        holes = np.concatenate([hole for _, hole in inputs])
        sampler = make_sampler(settings.scheduler, self.schedule, settings.steps, settings.strength)
        masked = self._masked_images(regions, pixels, holes, settings.prefill)
        image_latents, masked_latents = self._encode_pair(
            pixels, masked, generators, photo_needed=settings.strength < 1
        )
        factor = self.vae_scale_factor
        latent_mask = self._array(np.ascontiguousarray(holes[:, :, ::factor, ::factor]))
        batch, channels = masked_latents.shape[:2]
        noise = self._randn(tuple(masked_latents.shape), generators)
        if settings.noise_offset:
            noise = noise + settings.noise_offset * self._randn((batch, channels, 1, 1), generators)
        latents = initial_latents(self.schedule, sampler, image_latents, noise, settings.strength)
        lap("encode")
        predict = self._noise_predictor(
            latent_mask, masked_latents, settings.category, settings.guidance
        )
        latents = denoise(predict, sampler, latents, on_step=on_step, cancelled=cancelled)
        lap("denoise")
        decoded = self._decode(latents)
        if settings.residual_decode and image_latents is not None:  # None: from pure noise
            decoded = _with_change(pixels, decoded, self._decode(image_latents))
        lap("decode")
        return decoded

    def _masked_images(
        self, regions: list[Region], pixels: np.ndarray, holes: np.ndarray, prefill: Prefill
    ) -> np.ndarray:
        """The conditioning images: ``pixels`` (the sampler's start, prefilled with ``prefill``)
        with the hole zeroed, or holding :attr:`masked_image_fill`'s fill."""
        fill = self.masked_image_fill
        if fill is Prefill.NONE:
            return pixels * (1 - holes)
        if fill is prefill:
            return pixels
        return np.concatenate([region.model_inputs(fill)[0] for region in regions])


def _with_change(start_pixels: np.ndarray, decoded: np.ndarray, start: np.ndarray) -> np.ndarray:
    """``start_pixels`` ((B, 3, H, W) in [−1, 1], what the sampler started from) plus what the
    denoiser changed: ``decoded`` (its result, decoded) − ``start`` (the start's own latents,
    decoded), both (B, H, W, 3) uint8 → (B, H, W, 3) uint8. Whatever the VAE gets wrong in
    both decodes, such as a colour shift, cancels."""
    base = (start_pixels.transpose(0, 2, 3, 1) + 1) * 127.5
    change = decoded.astype(np.float32) - start.astype(np.float32)
    return np.clip(np.rint(base + change), 0, 255).astype(np.uint8)


class MoebiusInpaintPipeline(InpaintPipeline):
    """The PyTorch backend. Components: ``model`` (any :class:`~moebius.LCGModel`: student or
    teacher), ``vae`` (diffusers ``AutoencoderKL``; its layers are switched in place to drop-in
    subclasses that run channels-last maps on this machine's fastest kernels, see
    :mod:`moebius.nn.adopt`) and ``schedule`` (the training noise schedule,
    :class:`~moebius.sampling.NoiseSchedule`)."""

    def __init__(
        self,
        model,
        vae,
        schedule: NoiseSchedule | None = None,
        default_settings: InpaintSettings | None = None,
        masked_image_fill: Prefill | str = Prefill.NONE,
    ):
        from moebius.models.registry import vae_scale_factor
        from moebius.nn.adopt import adopt

        self.model = model.eval()
        self.vae = adopt(vae.eval())  # the same VAE, on this machine's fastest kernels
        self.schedule = schedule if schedule is not None else NoiseSchedule()
        if default_settings is not None:
            self.default_settings = default_settings.validate()
        self.masked_image_fill = parse_masked_image_fill(masked_image_fill)
        self.vae_scale_factor = vae_scale_factor(vae)
        self._progress_config = {}

    @property
    def components(self) -> dict:
        return {"model": self.model, "vae": self.vae, "schedule": self.schedule}

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def dtype(self):
        return next(self.model.parameters()).dtype

    @property
    def image_size(self) -> int:
        return self.model.config.sample_size * self.vae_scale_factor

    @property
    def pixel_multiple(self) -> int:
        levels = len(getattr(self.model.config, "block_out_channels", ())) or 4
        return self.vae_scale_factor * 2 ** (levels - 1)

    def to(self, device=None, dtype=None) -> "MoebiusInpaintPipeline":
        """Moves both networks; a VAE whose config asks for it stays float32 under float16."""
        import torch

        self.model.to(device=device, dtype=dtype)
        vae_dtype = dtype
        if dtype == torch.float16 and getattr(self.vae.config, "force_upcast", False):
            vae_dtype = torch.float32
        # diffusers warns whenever ``dtype=`` is passed at all, so only pass a real cast
        cast = (
            {} if vae_dtype in (None, next(self.vae.parameters()).dtype) else {"dtype": vae_dtype}
        )
        self.vae.to(device=device, **cast)
        return self

    def enable_vae_tiling(self, tile_size: int = VAE_TILE_SIZE) -> None:
        """Encode/decode inputs larger than ``tile_size`` pixels in overlapping tiles, whose
        GroupNorms use the whole image's statistics (:mod:`moebius.vae_tiling`)."""
        from moebius.vae_tiling import share_statistics_across_tiles

        self.vae.enable_tiling()
        self.vae.tile_sample_min_size = tile_size
        self.vae.tile_latent_min_size = tile_size // self.vae_scale_factor
        share_statistics_across_tiles(self.vae)

    def enable_vae_slicing(self) -> None:
        """Run the VAE one image at a time inside a batch (less peak memory)."""
        self.vae.enable_slicing()

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike = DEFAULT_REPO,
        variant: str = DEFAULT_VARIANT,
        model_config: str | None = None,
        device="cpu",
        dtype=None,
        cache_dir: str | os.PathLike | None = None,
        fuse: bool = False,
    ) -> "MoebiusInpaintPipeline":
        """Load from a directory written by :meth:`save_pretrained`, a directory in the authors'
        layout (``Moebius/<variant>/diffusion_pytorch_model.bin`` + ``vae/``), the bundled
        ``moebius-demo``, or a Hub repo id (``hustvl/Moebius``; ``variant`` is the subfolder).
        ``model_config`` overrides the preset guessed from the folder or repo name
        (``moebius-0.2b``, ``pixelhacker``)."""
        from diffusers import AutoencoderKL

        from moebius.models import from_pretrained as load_saved_model
        from moebius.models import load_model

        where = locate(name_or_path, variant, model_config, cache_dir)
        if where.model_dir is not None:
            model = load_saved_model(where.model_dir, fuse=fuse)
        else:
            model = load_model(where.model_config, where.model_file, fuse=fuse)
        try:
            vae = AutoencoderKL.from_pretrained(
                where.vae_dir, local_files_only=True, low_cpu_mem_usage=False
            )
        except (OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"cannot load the VAE from {where.vae_dir}: {exc}") from exc
        schedule = NoiseSchedule.load(where.scheduler_dir) if where.scheduler_dir else None
        try:
            defaults = InpaintSettings.from_mapping(where.settings)
        except InputError as exc:
            raise CheckpointError(f"{name_or_path}: {PIPELINE_FILE} settings: {exc}") from None
        return cls(model, vae, schedule, defaults, where.masked_image_fill).to(device, dtype)

    @classmethod
    def from_exported(cls, directory: str | os.PathLike, **options) -> InpaintPipeline:
        """A directory written by ``moebius export``, run by ONNX Runtime or OpenVINO with NumPy,
        without PyTorch: an :class:`~moebius.export.runtime.ExportedInpaintPipeline`, called like
        this class (``options``: ``backend``, ``threads``, ``dtype``; see
        :meth:`ExportedInpaintPipeline.from_exported`)."""
        from moebius.export.runtime import ExportedInpaintPipeline

        return ExportedInpaintPipeline.from_exported(directory, **options)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """``model/`` (moebius format), ``vae/`` (diffusers) and ``scheduler/`` (a diffusers
        DDIM config), then ``pipeline.json`` last so a half-written directory is never mistaken
        for a complete one. Its "settings" hold the :attr:`default_settings` that differ from the
        official model's, which :meth:`from_pretrained` restores."""
        from moebius.models import save_pretrained as save_model

        directory = Path(directory)
        save_model(self.model, directory / "model")
        self.vae.save_pretrained(directory / "vae")
        self.schedule.save(directory / "scheduler")
        manifest = {
            "_class_name": type(self).__name__,
            "model": "model",
            "vae": "vae",
            "scheduler": "scheduler",
        }
        official = InpaintSettings().to_dict()
        own = {k: v for k, v in self.default_settings.to_dict().items() if official[k] != v}
        if own:
            manifest["settings"] = own
        if self.masked_image_fill is not Prefill.NONE:
            manifest["masked_image_fill"] = self.masked_image_fill.value
        write_json(directory / PIPELINE_FILE, manifest)

    # ------------------------------------------------------------------ the backend
    def _inference(self):
        import torch

        return torch.inference_mode()

    def _synchronize(self) -> None:
        from moebius.runtime import synchronize

        synchronize(self.device)

    def _generators(self, generator, seed: int, count: int):
        import torch

        if generator is None:
            # CPU streams, so a seed gives the same noise on every device
            return [torch.Generator().manual_seed(seed) for _ in range(count)]
        if isinstance(generator, (list, tuple)):
            if len(generator) != count:
                raise InputError(f"{len(generator)} generators or seeds for {count} images")
            return [
                torch.Generator().manual_seed(g) if isinstance(g, int) else g for g in generator
            ]
        return generator

    def _randn(self, shape: tuple[int, ...], generators, dtype=None):
        import torch

        dtype = dtype or torch.float32

        def draw(size, generator):
            device = generator.device if generator is not None else "cpu"
            return torch.randn(size, generator=generator, device=device, dtype=dtype)

        if isinstance(generators, list):
            noise = torch.cat([draw((1, *shape[1:]), g) for g in generators])
        else:
            noise = draw(shape, generators)
        return noise.to(self.device)

    def _array(self, values: np.ndarray):
        import torch

        return torch.from_numpy(values).to(self.device)

    def _vae_input(self, values):
        """Pixels or latents in the VAE's dtype, channels-last: its convolutions and norms then
        run on the engines chosen for this machine (see :mod:`moebius.nn.adopt`)."""
        import torch

        values = self._array(values) if isinstance(values, np.ndarray) else values
        dtype = next(self.vae.parameters()).dtype
        return values.to(dtype).contiguous(memory_format=torch.channels_last)

    def _posterior_samples(
        self, pixels: np.ndarray, draws: int, generators, dropped_draws: int = 0
    ):
        """Posterior samples of ``draws`` equal parts of ``pixels`` encoded as one batch; each
        part's noise is drawn before the next part's, after ``dropped_draws`` thrown away."""
        import torch

        posterior = self.vae.encode(self._vae_input(pixels)).latent_dist
        mean, std = posterior.mean, posterior.std
        part = (mean.shape[0] // draws, *mean.shape[1:])
        noise = [self._randn(part, generators, mean.dtype) for _ in range(dropped_draws + draws)]
        noise = torch.cat(noise[dropped_draws:])
        sample = (mean + std * noise.to(mean.device)).float() * self.vae.config.scaling_factor
        return sample.contiguous()

    def _encode(self, pixels: np.ndarray, generators, dropped_draws: int = 0):
        return self._posterior_samples(pixels, 1, generators, dropped_draws)

    def _encode_pair(
        self, pixels: np.ndarray, masked: np.ndarray, generators, photo_needed: bool = True
    ):
        """Both through the VAE as one batch (twice the rows for every convolution)."""
        if not photo_needed:
            return super()._encode_pair(pixels, masked, generators, photo_needed)
        both = self._posterior_samples(np.concatenate([pixels, masked]), 2, generators)
        return both[: len(pixels)], both[len(pixels) :]

    def _noise_predictor(self, latent_mask, masked_latents, category: Category, guidance: float):
        import torch

        from moebius.models import category_ids
        from moebius.runtime import autocast

        batch = masked_latents.shape[0]
        device, dtype = self.device, self.dtype
        cfg = guidance != 1
        copies = 2 if cfg else 1
        if cfg:  # the unconditional branch is the other category, and it goes first
            ids = torch.cat(
                [category_ids(category.other, batch, device), category_ids(category, batch, device)]
            )
        else:
            ids = category_ids(category, batch, device)
        condition = torch.cat([latent_mask, masked_latents], dim=1).repeat(copies, 1, 1, 1)
        precision = autocast(device, dtype)

        def predict(latents, t: int):
            x = torch.cat([latents.repeat(copies, 1, 1, 1), condition], dim=1)
            # one timestep for the whole batch, shape (1,), exactly as the authors call the model
            timestep = torch.tensor([t], device=device)
            with precision:
                eps = self.model(x.to(dtype), timestep, ids).sample.float()
            return guided(eps, guidance) if cfg else eps

        return predict

    def _decode(self, latents) -> np.ndarray:
        pixels = self.vae.decode(self._vae_input(latents / self.vae.config.scaling_factor)).sample
        pixels = (pixels.float() + 1) / 2
        return (pixels.clamp(0, 1) * 255).permute(0, 2, 3, 1).cpu().numpy().astype(np.uint8)
