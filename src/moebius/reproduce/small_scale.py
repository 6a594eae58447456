"""``moebius reproduce small``: the paper's distillation recipe at small scale, on a CPU.

Stages (each resumable; a finished stage leaves ``<out>/<stage>/result.json``, and the
trainers resume mid-stage from their checkpoints):

1. ``data``     real photographs (:mod:`moebius.reproduce.photos`: Debian wallpaper photos and
                scikit-image's, or a folder) → training photos; held-out photos centre-cropped
                to the evaluation size, each with a thin, a medium and a thick LaMa mask.
2. ``vae``      a small f8/4-channel ``AutoencoderKL`` trained from scratch, with its
                held-out reconstruction PSNR and encode/decode time at the evaluation size.
3. ``decoder``  its decoder fine-tuned for squared error, the encoder frozen: the latents
                stay the same, what they decode to gets closer to the photo.
4. ``cache``    VAE latents of random multi-scale training crops with random masks.
5. ``teacher``  a small PixelHacker-shaped teacher, diffusion task loss only.
6. ``students`` Moebius-shaped students, same data and steps: with the paper's
                distillation and with the task loss only, for each seed.
7. ``eval``     held-out masked-region PSNR/SSIM of sampled fills, OpenCV Telea and
                Navier–Stokes for scale, bootstrap intervals, time per inpaint → report.

Every stage after ``data`` is a set of tasks (:mod:`moebius.reproduce.schedule`): each
student and each model's evaluation fills is one, and a task starts as soon as what it needs
has finished, not when the whole previous stage has. The latent cache needs only the VAE's
encoder, which the ``decoder`` stage leaves as it is, so the cache, the teacher and the
students do not wait for the decoder, and the no-KD students do not wait for the teacher.
With ``jobs`` = 2 two tasks run side by side on one thread each.

Both LCG categories are trained (a fraction of samples is labelled "foreground"), so the
branch that classifier-free guidance extrapolates away from is a trained one. ``scale``
multiplies every step count (tests run it with a tiny scale).
"""

import copy
import inspect
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from moebius.cpu import cpu_facts, describe_cpu
from moebius.errors import InputError
from moebius.files import atomic_write, write_json
from moebius.reproduce.schedule import Task, run_tasks
from moebius.settings import item_seed

STUDENT_CONFIG = {
    "model_type": "moebius",
    "block_out_channels": [32, 64, 128],
    "layers_per_block": 2,
    "cross_attention_dim": 64,
    "encoder_hid_dim": 96,
    "norm_num_groups": 8,
    "local_receptive_field": 7,
}
# The authors' constructor layout (as in the teacher fixture), at toy width.
TEACHER_CONFIG = {
    "model_type": "PixelHacker",
    "in_channels": 9,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "block_out_channels": [32, 64, 128, 128],
    "layers_per_block": 2,
    "norm_num_groups": 8,
    "cross_attention_dim": 64,
    "encoder_hid_dim": 96,
    "attention_head_dim": 8,
}
# The trainer's gradient-norm probes sit at the head's last conv and the deepest transformer's
# output projection; PixelHacker names them differently from the Moebius student.
TEACHER_AS_STUDENT = {
    "kd": False,
    "output_param": "diff_model.conv_out.weight",
    "feature_param": "diff_model.down_blocks.2.attentions.1.proj_out.weight",
}
MASK_KINDS = ("thin", "medium", "thick")
HOLE_RANGE = (0.10, 0.30)  # the target range for the held-out masks
HELDOUT_MASK_SEED = 1234


@dataclass
class RecipeConfig:
    out: str = "runs/small-scale"
    photos: str | None = None  # a folder of photos instead of the Debian + scikit-image set
    heldout_photos: int = 2  # with ``photos``: how many (the last by name) are held out
    scale: float = 1.0
    vae_steps: int = 3750  # 1500 at the published run's --scale 0.4
    vae_crop: int = 128  # the VAE is fully convolutional: train on crops, use at eval_size
    # then its decoder alone, for squared error (the encoder, so the latents, stay as they are)
    decoder_steps: int = 5000
    train_size: int = 256  # diffusion training crop (latent 32²)
    short_side: list[int] = field(default_factory=lambda: [256, 768])  # crop zoom range
    cache_variants: int = 64  # crops + masks cached per training photo
    # The masked image the networks are conditioned on holds OpenCV Telea's fill of the hole
    # rather than zero: so small a model, so briefly trained, then refines a guess of the hole's
    # colours instead of inventing them. One no-KD student trained both ways: −0.39 dB against
    # Telea with a zero hole, −0.03 dB with Telea's fill, at the demo's settings.
    masked_image_fill: str = "telea"
    teacher_steps: int = 6000
    student_steps: int = 4000
    batch_size: int = 8
    lr: float = 1e-3  # the teacher's
    # The Moebius student needs a larger step from scratch: its conv_in/conv_out are depthwise
    # units whose ReLU passes one sign of each input channel, and every residual branch adds an
    # un-gated SiLU(GroupNorm(·)), so learning even ε ≈ x_t at high noise means moving norm
    # scales and biases by O(1). On that probe (scripts/identity_probe.py: 300 AdamW steps,
    # 1.4 M student, authors' start) 1e-3 reached an MSE of 0.36 and 3e-3 0.14.
    student_lr: float = 3e-3
    # ε-prediction (the released model's) turns a small ε error near pure noise into a large
    # error in the implied clean latent (×14 at t = 950); these briefly trained networks
    # predict v, which the scheduler config they are saved with records.
    prediction_type: str = "v_prediction"
    foreground_prob: float = 0.5
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    jobs: int = 1  # tasks (trainings, evaluation fills) run at once, in separate processes
    eval_size: int = 512  # the demo's working resolution
    sample_steps: int = 20
    guidance: float = 2.5
    bootstrap: int = 1000
    docs: str | None = "docs"  # where the report goes; None = only under ``out``
    bundle: str | None = None  # write the KD student (first seed) + VAE as a pipeline here
    # the bundled demo's own defaults: at this scale the students paint mottled texture from
    # noise (about 2 dB below Telea inside the hole), so the demo starts from Telea's fill
    # noised to t = 250 and runs the last 5 of 20 DDIM steps, one branch (no guidance); and only
    # what the denoiser changed is decoded onto Telea's fill, so the small VAE's own
    # reconstruction error (24.6 dB held out; 18 dB on golden grass before the colour anchor)
    # cancels
    demo_settings: dict = field(
        default_factory=lambda: {
            "steps": 20,
            "prefill": "telea",
            "strength": 0.25,
            "guidance": 1.0,
            "residual_decode": True,
        }
    )

    def steps(self, base: int) -> int:
        return max(2, math.ceil(base * self.scale))


def _stage_done(directory: Path) -> dict | None:
    path = directory / "result.json"
    return json.loads(path.read_text()) if path.exists() else None


def _finish_stage(directory: Path, result: dict) -> dict:
    result = result | {"threads": torch.get_num_threads()}
    write_json(directory / "result.json", result)
    return result


def _save_png(path: Path, pixels: np.ndarray) -> None:
    atomic_write(path, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG"))


# ---------------------------------------------------------------------------- data
def _centre_square(image: Image.Image, side: int) -> np.ndarray:
    """Short side → ``side`` (LANCZOS), centre ``side``² crop: the whole photo's middle."""
    scale = side / min(image.size)
    size = (max(side, round(image.width * scale)), max(side, round(image.height * scale)))
    image = image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return np.asarray(image.crop((left, top, left + side, top + side)))


def heldout_mask(kind: str, side: int, rng: np.random.Generator, tries: int = 200) -> np.ndarray:
    """A LaMa ``kind`` mask (the 512 presets from 512 px up, else the 256 ones) redrawn until
    its hole covers :data:`HOLE_RANGE` of the image."""
    from moebius.masks import LamaMaskGenerator

    generator = LamaMaskGenerator.from_config(f"{kind}-{512 if side >= 512 else 256}")
    for _ in range(tries):
        mask = generator(side, side, rng)
        if HOLE_RANGE[0] <= mask.mean() <= HOLE_RANGE[1]:
            break
    return mask.astype(np.uint8)


def stage_data(cfg: RecipeConfig, out: Path) -> dict:
    from moebius.reproduce.photos import prepare_folder, prepare_photos, split_files

    directory = out / "data"
    if (done := _stage_done(directory)) is not None:
        return done
    photos = directory / "photos"
    if cfg.photos:
        manifest = prepare_folder(photos, Path(cfg.photos), cfg.heldout_photos)
    else:
        manifest = prepare_photos(photos)
    cases = []
    for path in split_files(photos, "heldout"):
        with Image.open(path) as opened:
            image = _centre_square(opened, cfg.eval_size)
        _save_png(directory / "heldout" / f"{path.stem}.png", image)
        for kind in MASK_KINDS:
            # Seeded by the photo's name and the kind alone: a redone stage, or a photo set
            # that gained or lost a member, pairs every photo with the same masks.
            rng = np.random.default_rng(item_seed(HELDOUT_MASK_SEED, f"{path.stem}/{kind}"))
            mask = heldout_mask(kind, cfg.eval_size, rng)
            _save_png(directory / "heldout" / f"{path.stem}_{kind}_mask.png", mask * 255)
            cases.append({"photo": path.stem, "mask": kind, "hole": float(mask.mean())})
    splits = [r["split"] for r in manifest["photos"]]
    return _finish_stage(
        directory,
        {
            "train_photos": splits.count("train"),
            "heldout_photos": splits.count("heldout"),
            "cases": cases,
            "manifest": manifest,
        },
    )


def _training_photos(out: Path) -> list[Path]:
    from moebius.reproduce.photos import split_files

    return split_files(out / "data" / "photos", "train")


def _heldout_cases(out: Path) -> tuple[list[dict], list[np.ndarray], list[np.ndarray]]:
    directory = out / "data" / "heldout"
    cases = _stage_done(out / "data")["cases"]
    images = {
        c["photo"]: np.asarray(Image.open(directory / f"{c['photo']}.png").convert("RGB"))
        for c in cases
    }
    masks = [
        (np.asarray(Image.open(directory / f"{c['photo']}_{c['mask']}_mask.png")) > 127).astype(
            np.uint8
        )
        for c in cases
    ]
    return cases, [images[c["photo"]] for c in cases], masks


# ---------------------------------------------------------------------------- vae
def _median_seconds(fn, repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


@torch.no_grad()
def vae_seconds(vae, side: int) -> dict[str, float]:
    """Median seconds for one encode and one decode of a ``side``² image."""
    x = torch.zeros(1, 3, side, side)
    latent = vae.encode(x).latent_dist.mode()
    return {
        "encode_seconds": _median_seconds(lambda: vae.encode(x).latent_dist.mode()),
        "decode_seconds": _median_seconds(lambda: vae.decode(latent).sample),
    }


def stage_vae(cfg: RecipeConfig, out: Path) -> dict:
    from moebius.reproduce.vae_training import train_vae

    return _vae_stage(cfg, out, "vae", train_vae, cfg.vae_steps)


def stage_decoder(cfg: RecipeConfig, out: Path) -> dict:
    from moebius.reproduce.vae_training import finetune_decoder

    train = partial(finetune_decoder, out / "vae" / "vae")
    return _vae_stage(cfg, out, "decoder", train, cfg.decoder_steps)


def _vae_stage(cfg: RecipeConfig, out: Path, stage: str, train, steps: int) -> dict:
    """Run ``train`` (a :mod:`moebius.reproduce.vae_training` trainer) on the recipe's photos
    and crops into ``out/stage``, scored on the held-out photos, timed, with the encode and
    decode seconds of the VAE it wrote."""
    directory = out / stage
    if (done := _stage_done(directory)) is not None:
        return done
    started = time.perf_counter()
    result = train(
        images=[Image.open(p).convert("RGB") for p in _training_photos(out)],
        out_dir=directory,
        steps=cfg.steps(steps),
        size=cfg.vae_crop,
        batch=cfg.batch_size,
        short_sides=tuple(cfg.short_side),
        heldout=list(heldout_photos(out).values()),
    )
    result["seconds"] = time.perf_counter() - started
    result |= vae_seconds(_load_vae(out, stage), cfg.eval_size)
    return _finish_stage(directory, result)


def heldout_photos(out: Path) -> dict[str, np.ndarray]:
    """The run's held-out photos by name, whole."""
    directory = out / "data" / "heldout"
    return {
        name: np.asarray(Image.open(directory / f"{name}.png").convert("RGB"))
        for name in dict.fromkeys(c["photo"] for c in _stage_done(out / "data")["cases"])
    }


def _load_vae(out: Path, stage: str = "decoder"):
    """The VAE as the ``vae`` stage trained it, or with the ``decoder`` stage's decoder (the
    one everything after uses; the encoder and so the latents are the same)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(out / stage / "vae", low_cpu_mem_usage=False).eval()


# ---------------------------------------------------------------------------- training
def _mask_sampler(cfg: RecipeConfig):
    from moebius.train.data import MaskSampler, MaskSource

    preset = 512 if cfg.train_size >= 512 else 256
    sources = [MaskSource("lama", 1.0, f"{kind}-{preset}") for kind in MASK_KINDS]
    sources.append(MaskSource("mat", 1.0, hole_range=(0.1, 0.5)))
    return MaskSampler(sources, dilate=(3, 5))


def stage_cache(cfg: RecipeConfig, out: Path) -> dict:
    from moebius.train.data import Record
    from moebius.train.latent_cache import write_latent_cache

    directory = out / "cache"
    if (done := _stage_done(directory)) is not None:
        return done
    # The VAE stage's: the decoder stage keeps its encoder, so the latents are the same.
    vae = _load_vae(out, "vae")
    started = time.perf_counter()
    write_latent_cache(
        [Record(p) for p in _training_photos(out)],
        vae,
        directory,
        cfg.train_size,
        _mask_sampler(cfg),
        variants=cfg.cache_variants,
        scaling_factor=vae.config.scaling_factor,
        short_side=tuple(cfg.short_side),
        progress=False,
        masked_image_fill=cfg.masked_image_fill,
    )
    return _finish_stage(directory, {"seconds": time.perf_counter() - started})


def _train_config(
    cfg: RecipeConfig,
    out: Path,
    name: str,
    model: dict,
    steps: int,
    seed: int,
    kd: bool,
    teacher: str | None,
    lr: float,
    scaling_factor: float,
):
    from moebius.train.config import TrainConfig

    return TrainConfig.from_dict(
        {
            "student": model | {"sample_size": cfg.train_size // 8},
            "student_init": "near-identity" if model is STUDENT_CONFIG else "authors",
            "teacher": teacher or "pixelhacker",
            "vae": None,
            "scaling_factor": scaling_factor,
            "image_size": cfg.train_size,
            "output_dir": str(out / name),
            "seed": seed,
            "data": {
                "cache": str(out / "cache"),
                "num_workers": 0,
                "foreground_prob": cfg.foreground_prob,
                "masked_image_fill": cfg.masked_image_fill,
            },
            "distill": ({"kd": kd} if teacher else TEACHER_AS_STUDENT)
            | {"prediction_type": cfg.prediction_type},
            "optim": {
                "optimizer": "adamw",
                "lr": lr,
                "warmup_steps": min(100, steps // 10),
                "schedule": "cosine",
                "min_lr_ratio": 0.05,
                "max_grad_norm": 1.0,
            },
            "train": {
                "batch_size": cfg.batch_size,
                "max_steps": steps,
                "mixed_precision": "no",
                "gradient_checkpointing": False,
                "checkpoint_every": max(1, steps // 10),
                "keep_checkpoints": 1,
                "log_every": max(1, min(10, steps // 4)),
                "tensorboard": False,
                "sample_every": 0,
            },
        }
    )


def _train(config) -> float:
    from moebius.train.trainer import Distiller

    resume = (Path(config.output_dir) / "checkpoints").is_dir() or None
    started = time.perf_counter()
    Distiller(config, resume=resume, progress=False).train()
    return time.perf_counter() - started


def stage_teacher(cfg: RecipeConfig, out: Path) -> dict:
    directory = out / "teacher"
    if (done := _stage_done(directory)) is not None:
        return done
    config = _teacher_config(cfg, out, _stage_done(out / "vae")["scaling_factor"])
    return _finish_stage(directory, {"steps": config.train.max_steps, "seconds": _train(config)})


def _teacher_config(cfg: RecipeConfig, out: Path, scaling_factor: float):
    steps = cfg.steps(cfg.teacher_steps)
    return _train_config(
        cfg, out, "teacher", TEACHER_CONFIG, steps, 0, False, None, cfg.lr, scaling_factor
    )


def _student_config(
    cfg: RecipeConfig, out: Path, name: str, kd: bool, seed: int, scaling_factor: float
):
    steps = cfg.steps(cfg.student_steps)
    teacher = str(out / "teacher" / "final")
    return _train_config(
        cfg, out, name, STUDENT_CONFIG, steps, seed, kd, teacher, cfg.student_lr, scaling_factor
    )


def student_runs(cfg: RecipeConfig) -> list[tuple[str, bool, int]]:
    return [
        (f"student-{'kd' if kd else 'nokd'}-seed{seed}", kd, seed)
        for seed in cfg.seeds
        for kd in (True, False)
    ]


def _train_student(cfg: RecipeConfig, out: Path, name: str, kd: bool, seed: int) -> dict:
    from moebius.nn.engines import prefers_bfloat16

    scaling_factor = _stage_done(out / "vae")["scaling_factor"]
    config = _student_config(cfg, out, name, kd, seed, scaling_factor)
    # The frozen teacher only gives targets, and bfloat16 rounding moves them far less than the
    # distillation loss is worth; the student itself trains in float32.
    teacher_bfloat16 = kd and prefers_bfloat16()
    config.train.teacher_mixed_precision = "bf16" if teacher_bfloat16 else "no"
    result = {"steps": config.train.max_steps, "kd": kd, "seed": seed}
    result["teacher_bfloat16"] = teacher_bfloat16
    return _finish_stage(out / name, result | {"seconds": _train(config)})


# ---------------------------------------------------------------------------- evaluation
DEMO_ROW = "demo (own defaults)"  # the bundled demo's row in the report
# The contact sheet's columns, left to right: (row, caption); "kd" and "nokd" stand for the
# first seed's students.
SHEET_COLUMNS = (
    ("masked", "masked input"),
    ("telea", "OpenCV Telea"),
    (DEMO_ROW, f"`{DEMO_ROW}`"),
    ("teacher", "teacher"),
    ("kd", "KD student"),
    ("nokd", "no-KD student"),
    ("truth", "ground truth"),
)


def at_sample_size(model, sample_size: int):
    """The same network built for latent side ``sample_size``: position tables are resampled
    once, exactly as the model resamples them on every call at that size, so outputs do not
    change; a pipeline then works at ``8 · sample_size`` px by default."""
    from moebius.models import build_model
    from moebius.nn.lambda_layers import resample_position_table

    config = copy.deepcopy(model.config)
    ratio = sample_size / config.sample_size
    config.sample_size = sample_size
    state = model.state_dict()
    for name, table in state.items():
        if name.endswith("rel_pos_emb"):
            side = round(math.isqrt(table.shape[0]) * ratio)
            state[name] = resample_position_table(table, (side, side))
    resized = build_model(config)
    resized.load_state_dict(state)
    return resized.eval()


def _load_pipeline(out: Path, model_dir: Path, cfg: RecipeConfig):
    from moebius.models import from_pretrained
    from moebius.pipeline import MoebiusInpaintPipeline
    from moebius.sampling import NoiseSchedule

    model = at_sample_size(from_pretrained(model_dir), cfg.eval_size // 8)
    pipe = MoebiusInpaintPipeline(
        model,
        _load_vae(out),
        NoiseSchedule.load(model_dir),
        masked_image_fill=cfg.masked_image_fill,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _inpaint(pipe, images, masks, cfg: RecipeConfig, own: dict | None = None) -> list[np.ndarray]:
    """The model's fills, composited into the true image with the hard mask: at the recipe's
    sampling settings from pure noise (strength 1), or with ``own`` settings over them (the
    demo's). No paste-back, and the hole's true pixels reach the model neither through the
    initial latent (strength < 1 without a prefill keeps a trace of them) nor through the blurred
    paste-back, as they reach no classical method either (OpenCV's fills never read them)."""
    from moebius.settings import InpaintSettings

    settings = {"steps": cfg.sample_steps, "guidance": cfg.guidance, "strength": 1.0}
    fixed = {"paste": "none", "strategy": "resize", "image_size": cfg.eval_size, "seed": 0}
    result = pipe(
        image=[Image.fromarray(i) for i in images],
        mask_image=[Image.fromarray(m * 255) for m in masks],
        settings=InpaintSettings.from_mapping(settings | (own or {}) | fixed),
        output_type="np",
    )
    return [
        np.where(m[..., None] > 0, fill, image)
        for fill, image, m in zip(result.images, images, masks, strict=True)
    ]


def _classical(image: np.ndarray, mask: np.ndarray, method: str) -> np.ndarray:
    import cv2

    flag = {"telea": cv2.INPAINT_TELEA, "navier-stokes": cv2.INPAINT_NS}[method]
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    return cv2.cvtColor(cv2.inpaint(bgr, mask * 255, 3, flag), cv2.COLOR_BGR2RGB)


def _case_scores(predictions, images, masks) -> dict[str, list[float]]:
    from moebius.eval.pixel import psnr, ssim

    triples = list(zip(predictions, images, masks, strict=True))
    return {
        "masked_psnr": [psnr(p, i, m) for p, i, m in triples],
        "masked_ssim": [ssim(p, i, m) for p, i, m in triples],
    }


def bootstrap_interval(
    values: np.ndarray, samples: int, seed: int, confidence: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of the mean over resampled cases (rows); columns are averaged
    first, so an (cases, seeds) array gives the interval of the mean over seeds."""
    values = np.asarray(values, np.float64).reshape(len(values), -1).mean(axis=1)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(values), (samples, len(values)))
    means = values[draws].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def _fills(pipe, images, masks, cfg: RecipeConfig, own: dict | None = None) -> list[np.ndarray]:
    """:func:`_inpaint` over every case, four images per call."""
    return [
        fill
        for start in range(0, len(images), 4)
        for fill in _inpaint(pipe, images[start : start + 4], masks[start : start + 4], cfg, own)
    ]


def _inpaint_seconds(
    pipe, image: np.ndarray, mask: np.ndarray, cfg: RecipeConfig, own: dict | None = None
) -> float:
    return _median_seconds(lambda: _inpaint(pipe, [image], [mask], cfg, own), repeats=2)


def sampled_rows(cfg: RecipeConfig) -> dict[str, tuple[str, dict | None]]:
    """The report's sampled rows: row → (model, settings over the recipe's). The demo's row is
    the first KD student at the demo's own settings."""
    models = ["teacher"] + [name for name, _, _ in student_runs(cfg)]
    return {name: (name, None) for name in models} | {DEMO_ROW: (models[1], cfg.demo_settings)}


def fills_task(row: str) -> str:
    """The task (and folder under the run) that samples ``row``'s fills."""
    return f"eval/fills/{'demo' if row == DEMO_ROW else row}"


def sample_fills(cfg: RecipeConfig, out: Path, row: str) -> dict:
    """``row``'s fills of every held-out case, kept in ``fills.npz`` beside its result (the
    model's parameter count and the seconds it took)."""
    directory = out / fills_task(row)
    if (done := _stage_done(directory)) is not None:
        return done
    model, own = sampled_rows(cfg)[row]
    started = time.perf_counter()
    _, images, masks = _heldout_cases(out)
    pipe = _load_pipeline(out, out / model / "final", cfg)
    fills = np.stack(_fills(pipe, images, masks, cfg, own))

    def save(tmp: Path) -> None:
        with tmp.open("wb") as handle:  # a name without .npz would get one added
            np.savez_compressed(handle, fills=fills)

    atomic_write(directory / "fills.npz", save)
    parameters = sum(p.numel() for p in pipe.model.parameters())
    return _finish_stage(
        directory, {"parameters": parameters, "seconds": time.perf_counter() - started}
    )


def stage_eval(cfg: RecipeConfig, out: Path) -> dict:
    """Scores of every row's fills (sampled now where no task has), the contact sheet, the loss
    plot and the time per inpaint, measured alone."""
    directory = out / "eval"
    if (done := _stage_done(directory)) is not None:
        return done
    started = time.perf_counter()
    cases, images, masks = _heldout_cases(out)
    scores: dict[str, dict[str, list[float]]] = {}
    samples: dict[str, list[np.ndarray]] = {}
    for method in ("telea", "navier-stokes"):
        samples[method] = [_classical(i, m, method) for i, m in zip(images, masks, strict=True)]
        scores[method] = _case_scores(samples[method], images, masks)
    sampled = sampled_rows(cfg)
    first_kd, first_nokd = (name for name, _, _ in student_runs(cfg)[:2])
    parameters, fill_seconds = {}, 0.0
    for name in sampled:
        fills = sample_fills(cfg, out, name)
        parameters[name], fill_seconds = fills["parameters"], fill_seconds + fills["seconds"]
        with np.load(out / fills_task(name) / "fills.npz") as stored:
            samples[name] = list(stored["fills"])
        scores[name] = _case_scores(samples[name], images, masks)
    seconds = {}
    for key, name in (("teacher", "teacher"), ("student", first_kd), ("demo", DEMO_ROW)):
        model, own = sampled[name]
        pipe = _load_pipeline(out, out / model / "final", cfg)
        seconds[key] = _inpaint_seconds(pipe, images[0], masks[0], cfg, own)
    samples["masked"] = [
        np.where(m[..., None] > 0, 255, i).astype(np.uint8)
        for i, m in zip(images, masks, strict=True)
    ]
    samples["truth"] = images
    first = {"kd": first_kd, "nokd": first_nokd}
    _write_contact_sheet(
        directory / "contact_sheet.png",
        samples,
        [first.get(row, row) for row, _ in SHEET_COLUMNS],
    )
    _write_loss_plot(directory / "loss.png", out, cfg)
    rows = {}
    for name, per_case in scores.items():
        rows[name] = {metric: float(np.mean(values)) for metric, values in per_case.items()}
        if name in parameters:
            rows[name]["parameters"] = parameters[name]
    result = {
        "rows": rows,
        "cases": cases,
        "scores": scores,
        "summary": _summary(scores, cfg),
        "inpaint_seconds": seconds,
        "demo_model": first_kd,
        "config": asdict(cfg),
        "threads": torch.get_num_threads(),
        "machine": _machine(),
        "stages": {s: _stage_done(out / s) for s in TRAINING_STAGES}
        | {n: _stage_done(out / n) for n, _, _ in student_runs(cfg)},
        "data": {k: v for k, v in _stage_done(out / "data").items() if k != "cases"},
        "fill_seconds": fill_seconds,  # every row's sampling, added up
    }
    result["seconds"] = time.perf_counter() - started  # the scoring and timing here
    # run() recorded this invocation's tasks; the scoring is part of it
    result["invocations"] = _add_to_last_invocation(out, result["seconds"], "eval")
    result["wall_seconds"] = sum(entry["seconds"] for entry in result["invocations"])
    return _finish_stage(directory, result)


def _summary(scores: dict, cfg: RecipeConfig) -> dict:
    """Per arm (KD / no-KD): mean masked PSNR/SSIM over seeds and cases with a bootstrap
    interval over cases; the KD − no-KD difference with a paired interval; each model's
    difference to Telea on the same holes."""
    summary = {}
    arms = {}
    for kd in (True, False):
        label = "kd" if kd else "nokd"
        names = [n for n, k, _ in student_runs(cfg) if k == kd]
        for metric in ("masked_psnr", "masked_ssim"):
            table = np.array([scores[n][metric] for n in names]).T  # (cases, seeds)
            arms[label, metric] = table
            low, high = bootstrap_interval(table, cfg.bootstrap, 0)
            per_seed = table.mean(axis=0)
            summary[f"{label}_{metric}"] = {
                "mean": float(table.mean()),
                "interval": [low, high],
                "seeds": [float(v) for v in per_seed],
            }
    for metric in ("masked_psnr", "masked_ssim"):
        difference = arms["kd", metric] - arms["nokd", metric]
        low, high = bootstrap_interval(difference, cfg.bootstrap, 1)
        summary[f"kd_minus_nokd_{metric}"] = {
            "mean": float(difference.mean()),
            "interval": [low, high],
        }
    telea = np.array(scores["telea"]["masked_psnr"])
    for name, per_case in scores.items():
        difference = np.array(per_case["masked_psnr"]) - telea
        low, high = bootstrap_interval(difference, cfg.bootstrap, 2)
        summary[f"{name}_minus_telea_psnr"] = {
            "mean": float(difference.mean()),
            "interval": [low, high],
            "wins": int((difference > 0).sum()),
        }
    return summary


def _write_contact_sheet(path: Path, samples: dict, columns: list[str], rows: int = 6) -> None:
    count = len(samples[columns[0]])
    picked = np.linspace(0, count - 1, min(rows, count)).round().astype(int)
    tiles = [np.concatenate([samples[c][i] for c in columns], axis=1) for i in picked]
    sheet = Image.fromarray(np.concatenate(tiles, axis=0).astype(np.uint8))
    if sheet.width > 1536:  # keep the docs image light
        sheet = sheet.resize((1536, round(sheet.height * 1536 / sheet.width)), Image.LANCZOS)
    atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"))


def _write_loss_plot(path: Path, out: Path, cfg: RecipeConfig) -> None:
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for name in ["teacher"] + [n for n, _, _ in student_runs(cfg)]:
        metrics = out / name / "metrics.csv"
        if not metrics.exists():
            continue
        with metrics.open() as handle:
            records = list(csv.DictReader(handle))
        if not records:
            continue
        steps = [int(r["step"]) for r in records]
        task = np.array([float(r["task"]) for r in records])
        window = min(10, len(task))  # the per-step task loss is noisy: a running mean
        smooth = np.convolve(task, np.ones(window) / window, mode="valid")
        axis.plot(steps[window - 1 :], smooth, label=name, linewidth=1)
    axis.set_xlabel("step")
    axis.set_ylabel("task loss (ε MSE, running mean)")
    axis.set_yscale("log")
    axis.legend(fontsize=7)
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))
    plt.close(figure)


# ---------------------------------------------------------------------------- report
def _settings_text(settings: dict) -> str:
    return ", ".join(f"{name} {value}" for name, value in settings.items())


def write_report(result: dict, out: Path, docs: Path) -> Path:
    """docs/small_scale.md (+ images) from the eval stage's JSON; every number comes from it."""
    import shutil

    from moebius.reproduce.photos import licence_markdown

    cfg = result["config"]
    images = docs / "images"
    images.mkdir(parents=True, exist_ok=True)
    for name in ("contact_sheet.png", "loss.png"):
        shutil.copyfile(out / "eval" / name, images / f"small_scale_{name}")
    rows, summary, stages = result["rows"], result["summary"], result["stages"]

    def interval(entry: dict, digits: int = 2) -> str:
        low, high = entry["interval"]
        return f"{entry['mean']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"

    def row(name: str) -> str:
        r = rows[name]
        params = f"{r['parameters'] / 1e6:.2f} M" if "parameters" in r else "—"
        vs = summary[f"{name}_minus_telea_psnr"]
        return (
            f"| {name} | {params} | {r['masked_psnr']:.2f} | {r['masked_ssim']:.4f} |"
            f" {interval(vs)} | {vs['wins']}/{len(result['cases'])} |"
        )

    vae, decoder = stages["vae"], stages["decoder"]
    times = result["inpaint_seconds"]
    data = result["data"]
    machine = result.get("machine") or _machine()  # results from before it was kept
    lines = [
        "# Small-scale reproduction (CPU)",
        "",
        "Generated by `moebius reproduce small` (see `src/moebius/reproduce/small_scale.py`);"
        " every number below comes from that run's `eval/result.json`, kept beside this page"
        " as `small_scale.json`.",
        f"Machine: {describe_cpu(machine)} ({machine['arch']}), {result['threads']} threads,"
        f" torch {machine['torch']}.",
        "",
        "## Setup",
        f"- Data: {data['train_photos']} training photographs (random multi-scale"
        f" {cfg['train_size']}² crops and flips), {data['heldout_photos']} whole photos held out"
        f" for evaluation, centre-cropped to {cfg['eval_size']}², each with a thin, a medium and"
        f" a thick LaMa mask covering {HOLE_RANGE[0]:.0%}–{HOLE_RANGE[1]:.0%} of the image."
        " Sources and licences below.",
        f"- VAE: small `AutoencoderKL` (f8, 4 latent channels), {vae['parameters'] / 1e6:.2f} M"
        f" parameters, {vae['steps']} steps, held-out reconstruction PSNR"
        f" {vae['heldout_psnr_db']:.1f} dB; then its decoder alone, the encoder frozen,"
        f" {decoder['steps']} steps for squared error: {decoder['heldout_psnr_db']:.1f} dB."
        f" At {cfg['eval_size']}² one encode takes {decoder['encode_seconds']:.2f} s and one"
        f" decode {decoder['decode_seconds']:.2f} s.",
        f"- Teacher: PixelHacker-shaped (GLA UNet), task loss only, {stages['teacher']['steps']}"
        " steps.",
        *_conditioning_lines(cfg),
        f"- Students: Moebius-shaped, {cfg['student_steps'] * cfg['scale']:.0f} steps each, seeds"
        f" {cfg['seeds']}: with the paper's distillation (KD) and task loss only (no-KD).",
        f"- Both LCG categories trained ({cfg['foreground_prob']:.0%} of samples labelled"
        " foreground); noise offset 0.0357, SD `scaled_linear` schedule,"
        f" {'ε' if cfg['prediction_type'] == 'epsilon' else 'v'}-prediction; students start"
        " near identity (`moebius.nn.initialisation.start_near_identity`).",
        _time_line(result),
        *_precision_lines(stages),
        "",
        f"## Results ({cfg['sample_steps']} DDIM steps, guidance {cfg['guidance']},"
        " masked-region metrics, strength 1, no paste-back)",
        "",
        "| model | params | masked PSNR (dB) | masked SSIM | PSNR − Telea [95 % CI] |"
        " wins over Telea |",
        "|---|---|---|---|---|---|",
        *[row(name) for name in rows],
        "",
        f"KD students: masked PSNR {interval(summary['kd_masked_psnr'])};"
        f" no-KD: {interval(summary['nokd_masked_psnr'])};"
        f" KD − no-KD: {interval(summary['kd_minus_nokd_masked_psnr'])} dB"
        " (bootstrap over held-out cases, seeds averaged).",
        "",
        f"**Verdict:** {_verdict(summary, len(cfg['seeds']))}",
        "",
        f"`{DEMO_ROW}` is the bundled `moebius-demo`: {result['demo_model']} at the demo's own"
        f" defaults ({_settings_text(cfg['demo_settings'])}): it starts from OpenCV Telea's fill"
        " of the hole, noised, and refines it, where the other rows paint from pure noise.",
        "",
        f"One inpaint at {cfg['eval_size']} px ({cfg['sample_steps']} steps, guidance"
        f" {cfg['guidance']}): student {times['student']:.2f} s, teacher"
        f" {times['teacher']:.2f} s; the demo at its own defaults {times['demo']:.2f} s.",
        "",
        "![contact sheet](images/small_scale_contact_sheet.png)",
        "",
        f"Columns: {', '.join(caption for _, caption in SHEET_COLUMNS)}.",
        "",
        "![task loss](images/small_scale_loss.png)",
        "",
        "## Photographs and licences",
        "",
        licence_markdown(data["manifest"]),
    ]
    # the README's numbers on the demo and the run are rendered from this copy
    write_json(docs / "small_scale.json", result)
    path = docs / "small_scale.md"
    text = "\n".join(lines)
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return path


def _conditioning_lines(cfg: dict) -> list[str]:
    """The report's line on what the masked image holds in the hole (none for runs from before
    the recipe chose)."""
    fill = cfg.get("masked_image_fill", "none")
    if fill == "none":
        return []
    method = {"telea": "Telea", "ns": "Navier–Stokes"}[fill]
    return [
        f"- Conditioning: every network (teacher and students, in training and sampling) sees"
        f" the masked image with OpenCV {method}'s fill in the hole where the authors' model sees"
        f" zero (`masked_image_fill: {fill}`, kept in the bundle's `pipeline.json`)."
    ]


def _precision_lines(stages: dict) -> list[str]:
    """The report's line on what trained in bfloat16 (none for runs from before it was kept)."""
    if "bfloat16" not in stages["vae"]:
        return []
    used = []
    if stages["vae"]["bfloat16"]:
        used.append("the VAE and its decoder trained under bfloat16 autocast")
    if any(entry.get("teacher_bfloat16") for entry in stages.values()):
        used.append("the teacher's forward in distillation ran in bfloat16")
    if not used:
        return ["- Precision: float32 throughout (no native bfloat16 here, or not faster)."]
    return [f"- Precision: {'; '.join(used)} (native and measured faster here); the rest float32."]


def _time_line(result: dict) -> str:
    """The report's line on time: the run's wall clock and each task's own minutes."""
    stages, jobs = result["stages"], result["config"]["jobs"]
    minutes = {name: entry["seconds"] / 60 for name, entry in stages.items()}
    threads = {name: entry["threads"] for name, entry in stages.items()}
    runs = student_runs(RecipeConfig(seeds=result["config"]["seeds"]))
    students = {kd: [minutes[name] for name, k, _ in runs if k == kd] for kd in (True, False)}
    side_by_side = (
        f"{jobs} tasks at a time in separate processes (threads per task: VAE"
        f" {threads['vae']}, teacher {threads['teacher']}, students"
        f" {max(threads[name] for name, _, _ in runs)})"
        if jobs > 1
        else "one task at a time"
    )
    return (
        f"- Time on this machine: {wall_clock_text(result)}, not counting the photo download,"
        f" {side_by_side}. Each task's own minutes:"
        f" VAE {minutes['vae']:.0f}, decoder {minutes['decoder']:.0f}, latent cache"
        f" {minutes['cache']:.0f}, teacher {minutes['teacher']:.0f}, students"
        f" {sum(students[True]) + sum(students[False]):.0f}"
        f" ({statistics.mean(students[True]):.0f} per KD student,"
        f" {statistics.mean(students[False]):.0f} per no-KD one), evaluation fills"
        f" {result['fill_seconds'] / 60:.0f}, scoring and timing {result['seconds'] / 60:.0f}."
    )


def _machine() -> dict:
    """The machine the evaluation ran on, kept in its result: a report rewritten elsewhere still
    names the machine that measured it (``lscpu``'s model name and the widest extension)."""
    import platform

    return cpu_facts() | {"arch": platform.machine(), "torch": torch.__version__}


def distillation_effect(summary: dict) -> str | None:
    """``"helped"`` or ``"hurt"`` where the KD − no-KD interval excludes zero, else None."""
    low, high = summary["kd_minus_nokd_masked_psnr"]["interval"]
    return "helped" if low > 0 else "hurt" if high < 0 else None


def _verdict(summary: dict, seeds: int) -> str:
    difference = summary["kd_minus_nokd_masked_psnr"]
    low, high = difference["interval"]
    text = (
        f"distillation changed held-out masked PSNR by {difference['mean']:+.2f} dB"
        f" (95 % interval {low:+.2f} to {high:+.2f} dB, {seeds} seed"
        f"{'s' if seeds > 1 else ''} per arm)."
    )
    if (effect := distillation_effect(summary)) is not None:
        return text + f" The interval excludes zero: here distillation {effect}."
    return text + " The interval includes zero: at this scale the data cannot tell them apart."


def bundle_demo(out: Path, destination: Path, cfg: RecipeConfig) -> None:
    """The first KD student + the VAE as a float16 pipeline directory (small enough for a wheel),
    built for the evaluation size so the pipeline works there by default, with
    ``cfg.demo_settings`` as its own defaults."""
    from moebius.settings import InpaintSettings

    name = student_runs(cfg)[0][0]
    pipe = _load_pipeline(out, out / name / "final", cfg)
    pipe.default_settings = InpaintSettings.from_mapping(cfg.demo_settings)
    pipe.model.half()
    pipe.vae.half()
    pipe.save_pretrained(destination)


STAGES = ("data", "vae", "decoder", "cache", "teacher", "students", "eval")
TRAINING_STAGES = ("vae", "decoder", "cache", "teacher")  # and each student, under its name


def recipe_tasks(cfg: RecipeConfig, until: str = "eval") -> list[Task]:
    """The stages after ``data`` up to ``until`` as tasks, the longest chain first: VAE, latent
    cache, teacher, the KD students; then the decoder and the no-KD students, which nothing
    waits for until the evaluation; then each row's evaluation fills."""
    out = Path(cfg.out)
    stage = {}

    def task(name: str, in_stage: str, work, args: tuple = (), after: tuple = ()) -> Task:
        stage[name] = in_stage
        return Task(name, work, (cfg, out, *args), after)

    def students(kd: bool) -> list[Task]:
        after = ("teacher",) if kd else ("cache",)
        return [
            task(name, "students", _train_student, (name, kd, seed), after)
            for name, is_kd, seed in student_runs(cfg)
            if is_kd == kd
        ]

    tasks = [
        task("vae", "vae", stage_vae),
        task("cache", "cache", stage_cache, after=("vae",)),
        task("teacher", "teacher", stage_teacher, after=("cache",)),
        *students(kd=True),
        task("decoder", "decoder", stage_decoder, after=("vae",)),  # every evaluation waits
        *students(kd=False),
        *[
            task(fills_task(row), "eval", sample_fills, (row,), (model, "decoder"))
            for row, (model, _) in sampled_rows(cfg).items()
        ],
    ]
    return [t for t in tasks if STAGES.index(stage[t.name]) <= STAGES.index(until)]


def write_photo_licences(manifest: dict, docs: Path) -> Path:
    """docs/training_photos.md: where every photo comes from and under which licence."""
    from moebius.reproduce.photos import licence_markdown

    splits = [r["split"] for r in manifest["photos"]]
    text = "\n".join(
        [
            "# Photographs used by `moebius reproduce small`",
            "",
            "Written by `moebius reproduce small` (the `data` stage,"
            " `src/moebius/reproduce/photos.py`) from the manifest it keeps with the photos;"
            " licences and copyright holders are read from each Debian package's"
            " `copyright` file, scikit-image's from its loaders' documentation. The photos"
            " themselves are not in the repository: the stage fetches them again.",
            "",
            f"{splits.count('train')} photographs for training (random multi-scale crops and"
            f" flips), {splits.count('heldout')} held out whole for evaluation and never cropped"
            " into training.",
            "",
            licence_markdown(manifest),
        ]
    )
    path = docs / "training_photos.md"
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return path


def _invocations(out: Path) -> list[dict]:
    """Each invocation that ran tasks: its wall-clock seconds and the tasks it ran, in order.
    A run interrupted and resumed, or a stage deleted to run it again after a change, adds
    one; an uninterrupted run from scratch has exactly one."""
    path = out / "wall.json"
    return json.loads(path.read_text())["invocations"] if path.exists() else []


def _write_invocations(out: Path, invocations: list[dict]) -> list[dict]:
    write_json(out / "wall.json", {"invocations": invocations})
    return invocations


def _record_invocation(out: Path, seconds: float, ran: list[str]) -> None:
    _write_invocations(out, [*_invocations(out), {"seconds": seconds, "ran": ran}])


def _add_to_last_invocation(out: Path, seconds: float, task: str) -> list[dict]:
    *earlier, last = _invocations(out)
    last = {"seconds": last["seconds"] + seconds, "ran": [*last["ran"], task]}
    return _write_invocations(out, [*earlier, last])


def wall_clock_text(result: dict) -> str:
    """The run's wall clock in words: one number for a run in one go, else each invocation's
    minutes and what it ran; tasks no invocation ran (their results copied in from an earlier
    run of the same training recipe) are named as such."""
    invocations = result["invocations"]
    tasks = [t.name for t in recipe_tasks(RecipeConfig(**result["config"]))] + ["eval"]
    ran = {name for entry in invocations for name in entry["ran"]}
    reused = [name for name in tasks if name not in ran]
    span = "from the VAE to the report"
    if reused:
        span = (
            f"for every task but {' and '.join(reused)}, whose results came from an earlier run"
            " of the same training recipe (their own minutes below)"
        )
    minutes = f"{result['wall_seconds'] / 60:.0f} min {span}"
    if len(invocations) == 1:
        return minutes
    every = set(tasks)

    def what(ran: list[str]) -> str:
        if every <= set(ran):
            return "every task"
        fills = sum(name.startswith("eval/") for name in ran)
        named = [name for name in ran if not name.startswith("eval")]
        named += [f"the evaluation fills of {fills} row{'s' * (fills > 1)}"] if fills else []
        return ", ".join(named + (["scoring"] if "eval" in ran else []))

    parts = [f"{entry['seconds'] / 60:.0f} min for {what(entry['ran'])}" for entry in invocations]
    return f"{minutes} over {len(invocations)} invocations ({'; then '.join(parts)})"


# Fields a run may change between invocations: where it writes, how many tasks run at once,
# which seeds it trains, and the evaluation's settings (delete the eval/ tasks to redo them).
NOT_TRAINING = (
    "out",
    "jobs",
    "docs",
    "bundle",
    "seeds",
    "sample_steps",
    "guidance",
    "bootstrap",
    "demo_settings",
)


def training_recipe(cfg: RecipeConfig) -> dict:
    """What the trained stages of a run depend on: the recipe's fields but :data:`NOT_TRAINING`,
    the three networks' configs, the VAE trainers' keyword defaults and the diffusion trainer's
    whole configuration for the teacher and a student, so that a default changed in code is
    caught like a changed field."""
    from moebius.reproduce.vae_training import SMALL_VAE, finetune_decoder, train_vae

    fields = {key: value for key, value in asdict(cfg).items() if key not in NOT_TRAINING}
    if cfg.photos:  # the same folder, however the invocation spells it
        fields["photos"] = str(Path(cfg.photos).resolve())
    networks = {"vae": SMALL_VAE, "teacher": TEACHER_CONFIG, "student": STUDENT_CONFIG}
    # Paths under the run (which may move) and the VAE stage's own scaling factor are left out.
    out, scaling_factor = Path("<out>"), 0.0
    trainers = {
        "teacher": _teacher_config(cfg, out, scaling_factor).to_dict(),
        "student": _student_config(cfg, out, "student", True, 0, scaling_factor).to_dict(),
    }
    for config in trainers.values():
        del config["scaling_factor"]
    vae_trainers = {
        "vae": _keyword_defaults(train_vae),
        "decoder": _keyword_defaults(finetune_decoder),
    }
    recorded = fields | networks | {"trainers": trainers, "vae_trainers": vae_trainers}
    return json.loads(json.dumps(recorded))  # as recipe.json will hold it


def _keyword_defaults(function) -> dict:
    return {
        name: parameter.default
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }


def _flat(recipe: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in recipe.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_training_recipe(cfg: RecipeConfig, out: Path) -> None:
    """Record the run's :func:`training_recipe` in ``out/recipe.json`` on its first invocation;
    refuse a later one under another, whose finished stages would be reused as if it had
    trained them."""
    path, current = out / "recipe.json", training_recipe(cfg)
    if not path.exists():
        write_json(path, current)
        return
    recorded, now = _flat(json.loads(path.read_text())), _flat(current)
    changed = [
        key
        for key in dict.fromkeys([*recorded, *now])
        if recorded.get(key, "unset") != now.get(key, "unset")
    ]
    # The trainers' configurations follow from the fields (steps, learning rates): name them
    # only when no field changed, that is when a default in code did.
    named = [key for key in changed if not key.startswith("trainers.")] or changed
    changes = [f"{key} {recorded.get(key, 'unset')} → {now.get(key, 'unset')}" for key in named]
    if changes:
        raise InputError(
            f"{out} was started under another training recipe ({'; '.join(changes)}):"
            " give a new --out, or delete the run"
        )


def run(cfg: RecipeConfig, until: str = "eval") -> dict:
    """Run the stages up to and including ``until`` (their tasks at ``cfg.jobs`` at a time);
    returns the data stage's result, or with ``until="eval"`` the evaluation's."""
    out = Path(cfg.out)
    check_training_recipe(cfg, out)
    result = stage_data(cfg, out)
    if cfg.docs:
        write_photo_licences(result["manifest"], Path(cfg.docs))
    if until == "data":
        return result

    def finished(task: str) -> bool:
        return _stage_done(out / task) is not None

    tasks = recipe_tasks(cfg, until)
    pending = [task.name for task in tasks if not finished(task.name)]
    scoring = until == "eval" and not finished("eval")
    started = time.perf_counter()
    try:
        run_tasks(tasks, finished, cfg.jobs, torch.get_num_threads())
    finally:  # the evaluation adds its own seconds to the last one
        ran = [name for name in pending if finished(name)]
        if ran or scoring:
            _record_invocation(out, time.perf_counter() - started, ran)
    if until != "eval":
        return result
    result = stage_eval(cfg, out)
    if cfg.docs:
        write_report(result, out, Path(cfg.docs))
    if cfg.bundle:
        bundle_demo(out, Path(cfg.bundle), cfg)
    return result
