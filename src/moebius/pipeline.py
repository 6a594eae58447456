"""``MoebiusInpaintPipeline``: photo + mask → photo with the hole filled.

At its core this is the authors' inference (DESIGN §2–3), reproduced step for
step so that their weights give their latents: binarise the mask, resize (short
side to the model size, sides floored to multiples of 64), encode image and
masked image with a *sample* of the VAE posterior, DDIM from ``strength``, CFG
between the two LCG categories in one 2B batch, decode, resize back, paste back
with a Gaussian-blurred mask. Around that core it adds what real photos need:
``crop`` (inpaint only a padded box around the mask) and ``original`` (run at
the photo's own resolution) strategies, batching, any aspect ratio and a
model-agnostic device/dtype story. Random numbers are drawn in the authors'
order (VAE sample of the image, of the masked image, noise, noise offset).
"""

import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DPMSolverMultistepScheduler
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image, ImageFilter
from tqdm.auto import tqdm

from moebius.errors import CheckpointError, InputError
from moebius.image_io import to_mask, to_rgb
from moebius.models import LCGModel, category_ids, load_model
from moebius.models import from_pretrained as load_saved_model
from moebius.models import save_pretrained as save_model
from moebius.models.checkpoint import atomic_write
from moebius.weights import DEFAULT_REPO, DEFAULT_VARIANT, PIPELINE_FILE, locate

# DESIGN §3: SD-1.x training schedule, epsilon prediction, diffusers defaults otherwise
SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "prediction_type": "epsilon",
}
SCHEDULERS = ("ddim", "dpm++")
STRATEGIES = ("auto", "resize", "crop", "original")
# the authors floor both sides to this after scaling the short side to the model size
RESIZE_MULTIPLE = 64
# ``auto`` switches from ``resize`` to ``crop`` when the short side exceeds this × model size
CROP_THRESHOLD = 1.5
# VAE tiles kick in above this side (pixels); below it the VAE runs exactly as the authors'
VAE_TILE_SIZE = 1024
PASTE_BLUR_RADIUS = 3


def check_steps(steps: int, strength: float) -> None:
    """``strength`` in (0, 1] and at least one denoising step (the authors run
    ``int(steps·strength)`` of them), else an InputError."""
    if not 0 < strength <= 1:
        raise InputError(f"strength must be in (0, 1], got {strength}")
    if int(steps * strength) < 1:
        raise InputError(
            f"{steps} steps at strength {strength} run no denoising step "
            f"(int(steps·strength) = 0); use more steps or strength 1"
        )


def make_scheduler(kind: str = "ddim", config: dict | None = None):
    """DDIM with the DESIGN §3 schedule, or DPM-Solver++ (2nd order) on the same betas."""
    ddim = DDIMScheduler.from_config(config) if config else DDIMScheduler(**SCHEDULE)
    if kind == "ddim":
        return ddim
    if kind == "dpm++":
        return DPMSolverMultistepScheduler.from_config(
            ddim.config, algorithm_type="dpmsolver++", solver_order=2
        )
    raise InputError(f"unknown scheduler {kind!r}; choose one of {', '.join(SCHEDULERS)}")


@dataclass
class InpaintOutput:
    """``images``: PIL images (``output_type="pil"``) or HxWx3 uint8 arrays (``"np"``)."""

    images: list


@dataclass
class _Job:
    """One (image, mask) pair on its way through the pipeline."""

    image: Image.Image  # the full input, RGB
    mask: Image.Image  # full size, binarised 0/255, undilated: used for paste-back
    box: tuple[int, int, int, int]  # region the model sees, in input pixels
    strategy: str
    work: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # image, mask, masked image
    result: Image.Image | None = None


def _binarise(mask: Image.Image) -> Image.Image:
    # the authors threshold at 255/2 in 8 bit
    return mask.point(lambda v: 0 if v < 127.5 else 255, "L")


def _resize_size(width: int, height: int, size: int) -> tuple[int, int]:
    """Short side → ``size`` (the long side truncated), both floored to multiples of 64."""
    if width < height:
        w, h = size, int(height * size / width)
    else:
        w, h = int(width * size / height), size
    return w // RESIZE_MULTIPLE * RESIZE_MULTIPLE, h // RESIZE_MULTIPLE * RESIZE_MULTIPLE


def crop_box(mask: np.ndarray, size: int, padding: int) -> tuple[int, int, int, int]:
    """A box around the mask's bounding box plus ``padding``, square with side ≥ ``size`` where
    the image allows, centred on the hole and shifted to stay inside the image."""
    height, width = mask.shape
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    side = max(size, x1 - x0 + 2 * padding, y1 - y0 + 2 * padding)
    bw, bh = min(side, width), min(side, height)
    left = min(max(int(round((x0 + x1 - bw) / 2)), 0), width - bw)
    top = min(max(int(round((y0 + y1 - bh) / 2)), 0), height - bh)
    return left, top, left + bw, top + bh


def _pad_to_multiple(array: np.ndarray, multiple: int) -> np.ndarray:
    height, width = array.shape[:2]
    pad_h, pad_w = -height % multiple, -width % multiple
    pads = [(0, pad_h), (0, pad_w)] + [(0, 0)] * (array.ndim - 2)
    reflect = pad_h < height and pad_w < width
    return np.pad(array, pads, mode="reflect" if reflect else "edge")


def _paste(result: Image.Image, original: Image.Image, mask: Image.Image) -> Image.Image:
    """The authors' blend: a radius-3 Gaussian of the binary mask, in [0, 1] floats, truncated."""
    weight = np.asarray(mask.convert("RGB").filter(ImageFilter.GaussianBlur(PASTE_BLUR_RADIUS)))
    weight = weight / 255.0
    ours = np.asarray(result) / 255.0
    theirs = np.asarray(original) / 255.0
    return Image.fromarray(np.uint8((ours * weight + (1 - weight) * theirs) * 255))


class MoebiusInpaintPipeline:
    """Components: ``model`` (any :class:`~moebius.LCGModel`: student or teacher), ``vae``
    (diffusers ``AutoencoderKL``) and ``scheduler`` (DDIM by default, see :func:`make_scheduler`)."""

    def __init__(self, model: LCGModel, vae: AutoencoderKL, scheduler=None):
        self.model = model.eval()
        self.vae = vae.eval()
        self.scheduler = scheduler if scheduler is not None else make_scheduler("ddim")
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self._progress_config: dict = {}

    # ------------------------------------------------------------------ components
    @property
    def components(self) -> dict:
        return {"model": self.model, "vae": self.vae, "scheduler": self.scheduler}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def image_size(self) -> int:
        """The side (pixels) the model was trained at."""
        return self.model.config.sample_size * self.vae_scale_factor

    @property
    def pixel_multiple(self) -> int:
        """Input sides must be multiples of this: VAE factor × the model's down-sampling."""
        levels = len(getattr(self.model.config, "block_out_channels", ())) or 4
        return self.vae_scale_factor * 2 ** (levels - 1)

    def to(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> "MoebiusInpaintPipeline":
        """Moves both networks; a VAE whose config asks for it stays float32 under float16."""
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
        """Encode/decode inputs larger than ``tile_size`` pixels in overlapping tiles."""
        self.vae.enable_tiling()
        self.vae.tile_sample_min_size = tile_size
        self.vae.tile_latent_min_size = tile_size // self.vae_scale_factor

    def enable_vae_slicing(self) -> None:
        """Run the VAE one image at a time inside a batch (less peak memory)."""
        self.vae.enable_slicing()

    def set_progress_bar_config(self, **kwargs) -> None:
        self._progress_config = kwargs

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike = DEFAULT_REPO,
        variant: str = DEFAULT_VARIANT,
        model_config: str | None = None,
        scheduler: str = "ddim",
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        cache_dir: str | os.PathLike | None = None,
        fuse: bool = False,
    ) -> "MoebiusInpaintPipeline":
        """Load from a directory written by :meth:`save_pretrained`, a directory in the authors'
        layout (``Moebius/<variant>/diffusion_pytorch_model.bin`` + ``vae/``), or a Hub repo id
        (``hustvl/Moebius``; ``variant`` is the subfolder). ``model_config`` overrides the
        preset guessed from the folder or repo name (``moebius-0.2b``, ``pixelhacker``)."""
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
        config = None
        if where.scheduler_dir is not None:
            config = DDIMScheduler.load_config(where.scheduler_dir)
        pipe = cls(model, vae, make_scheduler(scheduler, config))
        return pipe.to(device, dtype)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """``model/`` (moebius format), ``vae/`` and ``scheduler/`` (diffusers), then
        ``pipeline.json`` last so a half-written directory is never mistaken for a complete one."""
        directory = Path(directory)
        save_model(self.model, directory / "model")
        self.vae.save_pretrained(directory / "vae")
        # the DDIM base schedule; DPM-Solver++ is derived from it at load time
        base = self.scheduler if isinstance(self.scheduler, DDIMScheduler) else make_scheduler()
        base.save_pretrained(directory / "scheduler")
        manifest = {
            "_class_name": type(self).__name__,
            "model": "model",
            "vae": "vae",
            "scheduler": "scheduler",
        }
        text = json.dumps(manifest, indent=2) + "\n"
        atomic_write(directory / PIPELINE_FILE, lambda tmp: tmp.write_text(text))

    # ------------------------------------------------------------------ preprocessing
    def _prepare(
        self,
        image: Image.Image,
        mask: Image.Image,
        strategy: str,
        size: int,
        dilation: int,
        resize_mask: bool,
        crop_padding: int,
    ) -> _Job | None:
        image, mask = to_rgb(image), to_mask(mask)
        if mask.size != image.size:
            if not resize_mask:
                raise InputError(
                    f"mask size {mask.size[0]}x{mask.size[1]} differs from image size "
                    f"{image.size[0]}x{image.size[1]} (use resize_mask / --resize-mask)"
                )
            mask = mask.resize(image.size, Image.Resampling.NEAREST)
        mask = _binarise(mask)
        if mask.getextrema()[1] == 0:
            return None
        if strategy == "auto":
            strategy = "crop" if min(image.size) > CROP_THRESHOLD * size else "resize"
        if strategy == "crop":
            box = crop_box(np.asarray(mask) > 0, size, crop_padding)
        else:
            box = (0, 0, *image.size)
        job = _Job(image=image, mask=mask, box=box, strategy=strategy)

        region, region_mask = image.crop(box), mask.crop(box)
        if strategy == "original":
            pixels = _pad_to_multiple(np.asarray(region), self.pixel_multiple)
            mask_pixels = _pad_to_multiple(np.asarray(region_mask), self.pixel_multiple)
        else:
            target = _resize_size(*region.size, size)
            pixels = np.asarray(region.resize(target, Image.Resampling.LANCZOS))
            mask_pixels = np.asarray(region_mask.resize(target, Image.Resampling.LANCZOS))
        if dilation:
            mask_pixels = cv2.dilate(mask_pixels, np.ones((dilation, dilation), np.uint8))

        # float64 maths then one cast, as the authors do, so the inputs match bit for bit
        pixels = torch.from_numpy(pixels / 255.0 * 2 - 1).permute(2, 0, 1)[None].float()
        binary = torch.from_numpy(mask_pixels / 255.0)[None, None].float() >= 0.5
        binary = binary.float()
        job.work = (pixels, binary, pixels * (1 - binary))
        return job

    # ------------------------------------------------------------------ sampling
    def _timesteps(self, steps: int, strength: float) -> torch.Tensor:
        self.scheduler.set_timesteps(steps, device=self.device)
        start = steps - min(int(steps * strength), steps)
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(start * self.scheduler.order)
        return self.scheduler.timesteps[start * self.scheduler.order :]

    def _encode(self, pixels: torch.Tensor, generator) -> torch.Tensor:
        vae_param = next(self.vae.parameters())
        posterior = self.vae.encode(pixels.to(vae_param.device, vae_param.dtype)).latent_dist
        return posterior.sample(generator=generator).float() * self.vae.config.scaling_factor

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae_dtype = next(self.vae.parameters()).dtype
        pixels = self.vae.decode((latents / self.vae.config.scaling_factor).to(vae_dtype)).sample
        return (pixels.float() + 1) / 2

    def _denoise(
        self,
        pixels: torch.Tensor,
        masks: torch.Tensor,
        masked: torch.Tensor,
        steps: int,
        guidance_scale: float,
        strength: float,
        noise_offset: float,
        category: str,
        generator,
        callback: Callable | None,
        progress: tqdm | None,
    ) -> torch.Tensor:
        device = self.device
        timesteps = self._timesteps(steps, strength)
        latents_image = self._encode(pixels, generator)
        masked_latents = self._encode(masked, generator)
        batch = latents_image.shape[0]
        # nearest resize of the {0,1} mask to latent size
        latent_mask = torch.nn.functional.interpolate(
            masks.to(device), size=latents_image.shape[-2:]
        )

        noise = randn_tensor(latents_image.shape, generator=generator, device=device)
        if noise_offset:
            offset = randn_tensor((batch, latents_image.shape[1], 1, 1), generator, device=device)
            noise = noise + noise_offset * offset
        if strength < 1:
            latents = self.scheduler.add_noise(latents_image, noise, timesteps[:1])
        else:
            latents = noise

        other = "foreground" if category == "background" else "background"
        cfg = guidance_scale != 1
        if cfg:  # the unconditional branch is the *other* category, and it goes first
            ids = torch.cat(
                [category_ids(other, batch, device), category_ids(category, batch, device)]
            )
        else:
            ids = category_ids(category, batch, device)
        copies = 2 if cfg else 1
        condition = torch.cat([latent_mask, masked_latents], dim=1).repeat(copies, 1, 1, 1)
        # Reduced-precision weights run under autocast, whose policy keeps the ops that need
        # it (norms, softmax) in float32: as accurate as plain bfloat16, and faster on CPU.
        autocast = torch.autocast(
            device.type,
            dtype=self.dtype,
            enabled=self.dtype != torch.float32 and device.type in ("cpu", "cuda"),
        )

        for i, t in enumerate(timesteps):
            scaled = self.scheduler.scale_model_input(latents, t)
            x = torch.cat([scaled.repeat(copies, 1, 1, 1), condition], dim=1)
            # one timestep for the whole batch, shape (1,), exactly as the authors call the model
            with autocast:
                eps = self.model(x.to(self.dtype), t.reshape(1), ids).sample.float()
            if cfg:
                eps_uncond, eps_cond = eps.chunk(2)
                eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
            latents = self.scheduler.step(eps, t, latents, generator=generator, return_dict=False)[
                0
            ]
            if callback is not None:
                returned = callback(self, i, t, {"latents": latents})
                if returned and "latents" in returned:
                    latents = returned["latents"]
            if progress is not None:
                progress.update(1)
        return self._decode(latents)

    # ------------------------------------------------------------------ postprocessing
    def _finish(self, job: _Job, decoded: torch.Tensor, paste_back: bool) -> Image.Image:
        array = (decoded.clamp(0, 1) * 255).permute(1, 2, 0).cpu().numpy().astype(np.uint8)
        result = Image.fromarray(array)
        box_size = (job.box[2] - job.box[0], job.box[3] - job.box[1])
        if job.strategy == "original":
            result = result.crop((0, 0, *box_size))
        else:
            result = result.resize(box_size, Image.Resampling.LANCZOS)
        if paste_back:
            result = _paste(result, job.image.crop(job.box), job.mask.crop(job.box))
        if job.box == (0, 0, *job.image.size):
            return result
        full = job.image.copy()
        full.paste(result, job.box[:2])
        return full

    @torch.inference_mode()
    def __call__(
        self,
        image: Image.Image | Sequence[Image.Image],
        mask_image: Image.Image | Sequence[Image.Image],
        num_inference_steps: int = 20,
        guidance_scale: float = 2.5,
        generator: torch.Generator | int | None = None,
        strength: float = 0.99,
        noise_offset: float = 0.0357,
        category: str = "background",
        mask_dilation: int = 0,
        paste_back: bool = True,
        output_type: str = "pil",
        strategy: str = "auto",
        image_size: int | None = None,
        resize_mask: bool = False,
        crop_padding: int = 64,
        callback_on_step_end: Callable | None = None,
    ) -> InpaintOutput:
        """Inpaint ``image`` where ``mask_image`` is white (≥ 128).

        ``category``: ``"background"`` fills with scene (object removal), ``"foreground"``
        with an object; the other category is the CFG unconditional branch.
        ``generator``: a ``torch.Generator`` or an int seed (the authors reseed 0 on every
        call); ``None`` draws from the global RNG.
        ``strategy``: ``resize`` (short side to the model size, as the authors), ``crop``
        (only a box of ``crop_padding`` px around the mask, at model size, pasted back),
        ``original`` (the photo's own resolution), ``auto`` (``crop`` when the short side is
        over 1.5× the model size, else ``resize``). Images of equal working size are denoised
        as one batch. An empty mask returns the input unchanged, with a warning.
        ``callback_on_step_end(pipe, i, t, {"latents": ...})`` runs after every step.
        """
        if strategy not in STRATEGIES:
            raise InputError(
                f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}"
            )
        if category not in ("background", "foreground"):
            raise InputError(f"category must be background or foreground, got {category!r}")
        if output_type not in ("pil", "np"):
            raise InputError(f"output_type must be 'pil' or 'np', got {output_type!r}")
        check_steps(num_inference_steps, strength)
        images = [image] if isinstance(image, Image.Image) else list(image)
        masks = [mask_image] if isinstance(mask_image, Image.Image) else list(mask_image)
        if len(images) != len(masks):
            raise InputError(f"{len(images)} images but {len(masks)} masks")
        if isinstance(generator, int):
            generator = torch.Generator(self.device).manual_seed(generator)
        size = image_size or self.image_size
        if size < RESIZE_MULTIPLE or size % RESIZE_MULTIPLE:
            raise InputError(f"image_size must be a positive multiple of 64, got {size}")

        jobs = [
            self._prepare(im, m, strategy, size, mask_dilation, resize_mask, crop_padding)
            for im, m in zip(images, masks, strict=True)
        ]
        for index, job in enumerate(jobs):
            if job is None:
                warnings.warn(
                    f"image {index}: the mask is empty; returning the input unchanged", stacklevel=2
                )
        groups: dict[tuple, list[int]] = {}
        for index, job in enumerate(jobs):
            if job is not None:
                groups.setdefault(tuple(job.work[0].shape), []).append(index)

        steps_per_group = len(self._timesteps(num_inference_steps, strength))
        progress = tqdm(
            total=steps_per_group * len(groups), desc="denoising", **self._progress_config
        )
        with progress:
            for members in groups.values():
                stacked = [
                    torch.cat([jobs[i].work[k] for i in members]).to(self.device) for k in range(3)
                ]
                decoded = self._denoise(
                    *stacked,
                    steps=num_inference_steps,
                    guidance_scale=guidance_scale,
                    strength=strength,
                    noise_offset=noise_offset,
                    category=category,
                    generator=generator,
                    callback=callback_on_step_end,
                    progress=progress,
                )
                for row, index in enumerate(members):
                    jobs[index].result = self._finish(jobs[index], decoded[row], paste_back)

        outputs = [to_rgb(images[i]) if job is None else job.result for i, job in enumerate(jobs)]
        if output_type == "np":
            outputs = [np.asarray(out) for out in outputs]
        return InpaintOutput(images=outputs)
