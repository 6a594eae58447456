"""``moebius reproduce small``: the paper's distillation recipe at toy scale, on a CPU.

Stages (each resumable; a finished stage leaves ``<out>/<stage>/result.json``):

1. ``data``     bundled public-domain photos → training images; fixed held-out crops + masks.
2. ``vae``      a small f8/4-channel ``AutoencoderKL`` trained from scratch.
3. ``teacher``  a small PixelHacker-shaped teacher, diffusion task loss only.
4. ``students`` Moebius-shaped students, same data and steps: with the paper's
                distillation and with the task loss only, for each seed.
5. ``eval``     held-out masked-region PSNR/SSIM of 20-step samples, ε-prediction error at
                fixed timesteps, per-step time, and OpenCV Telea for scale → report.

Sizes are chosen so the whole recipe fits in about an hour on 2 CPU cores; ``scale``
multiplies every step count (tests run it with a tiny scale). Small models run fastest
with one thread per process on a busy 2-core machine, hence ``--threads``.
"""

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from moebius.files import atomic_write

IMAGE_SIZE = 128
STUDENT_CONFIG = {
    "model_type": "moebius",
    "block_out_channels": [32, 64, 128],
    "cross_attention_dim": 64,
    "encoder_hid_dim": 96,
    "norm_num_groups": 16,
    "sample_size": IMAGE_SIZE // 8,
}
# The authors' constructor layout (as in the teacher fixture), at toy width.
TEACHER_CONFIG = {
    "model_type": "PixelHacker",
    "sample_size": IMAGE_SIZE // 8,
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


@dataclass
class RecipeConfig:
    out: str = "runs/small-scale"
    scale: float = 1.0
    vae_steps: int = 800
    vae_crop: int = 64  # the VAE is fully convolutional: train on small crops, use at 128
    teacher_steps: int = 2000
    student_steps: int = 1000
    batch_size: int = 8
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    heldout_count: int = 16
    sample_steps: int = 20
    guidance: float = 2.5
    eps_timesteps: list[int] = field(default_factory=lambda: [100, 300, 500, 700, 900])
    docs: str | None = "docs"  # where the report goes; None = only under ``out``
    bundle: str | None = None  # write the KD student (first seed) + VAE as a pipeline here

    def steps(self, base: int) -> int:
        return max(2, math.ceil(base * self.scale))


def _stage_done(directory: Path) -> dict | None:
    path = directory / "result.json"
    return json.loads(path.read_text()) if path.exists() else None


def _finish_stage(directory: Path, result: dict) -> dict:
    text = json.dumps(result, indent=2) + "\n"
    atomic_write(directory / "result.json", lambda tmp: tmp.write_text(text))
    return result


def _mask_for(index: int, size: int, seed: int) -> np.ndarray:
    from moebius.masks import mat_free_form_mask

    return mat_free_form_mask(size, size, np.random.default_rng([seed, index]), (0.15, 0.45))


def stage_data(cfg: RecipeConfig, out: Path) -> dict:
    from moebius.reproduce.photos import PHOTOS, heldout_crops, write_training_photos

    directory = out / "data"
    if (done := _stage_done(directory)) is not None:
        return done
    train = write_training_photos(directory / "train")
    # Each crop's mask follows from its position alone, so an interrupted run redone pairs
    # every crop with the same mask.
    for index, (name, crop) in enumerate(heldout_crops(cfg.heldout_count, IMAGE_SIZE, seed=1234)):
        mask = _mask_for(index, IMAGE_SIZE, 1234)
        for suffix, picture in (("", crop), ("_mask", Image.fromarray(mask * 255))):
            atomic_write(
                directory / "heldout" / f"{name}{suffix}.png",
                lambda tmp, p=picture: p.save(tmp, format="PNG"),
            )
    photos = [asdict(p) for p in PHOTOS]
    return _finish_stage(
        directory,
        {"train_images": len(train), "heldout_crops": cfg.heldout_count, "photos": photos},
    )


def _training_images(out: Path) -> list[np.ndarray]:
    return [
        np.asarray(Image.open(p).convert("RGB"))
        for p in sorted((out / "data" / "train").glob("*.png"))
    ]


def stage_vae(cfg: RecipeConfig, out: Path) -> dict:
    from moebius.reproduce.vae_training import train_vae

    directory = out / "vae"
    if (done := _stage_done(directory)) is not None:
        return done
    started = time.perf_counter()
    result = train_vae(
        _training_images(out),
        directory,
        cfg.steps(cfg.vae_steps),
        size=cfg.vae_crop,
        batch=cfg.batch_size,
    )
    result["seconds"] = time.perf_counter() - started
    return _finish_stage(directory, result)


def _train_config(
    cfg: RecipeConfig,
    out: Path,
    name: str,
    model: dict,
    steps: int,
    seed: int,
    kd: bool,
    teacher: str | None,
    scaling_factor: float,
):
    from moebius.train.config import TrainConfig

    return TrainConfig.from_dict(
        {
            "student": model,
            "teacher": teacher or "pixelhacker",
            "vae": str(out / "vae" / "vae"),
            "scaling_factor": scaling_factor,
            "image_size": IMAGE_SIZE,
            "output_dir": str(out / name),
            "seed": seed,
            "data": {
                "train": str(out / "data" / "train"),
                "num_workers": 0,
                "dilate": [3, 5],
                "masks": [
                    {"kind": "mat", "hole_range": [0.1, 0.6]},
                    {"kind": "lama", "config": "thin-256"},
                ],
            },
            "distill": {"kd": kd} if teacher else TEACHER_AS_STUDENT,
            "optim": {
                "optimizer": "adamw",
                "lr": 5e-4,
                "warmup_steps": min(100, steps // 10),
                "schedule": "cosine",
                "min_lr_ratio": 0.1,
                "max_grad_norm": 1.0,
            },
            "train": {
                "batch_size": cfg.batch_size,
                "max_steps": steps,
                "mixed_precision": "no",
                "gradient_checkpointing": False,
                "checkpoint_every": max(1, steps // 4),
                "keep_checkpoints": 1,
                "log_every": 10,
                "tensorboard": False,
                "sample_every": 0,
            },
        }
    )


def _train(config) -> float:
    from moebius.train.trainer import Distiller

    resume = (Path(config.output_dir) / "checkpoints").is_dir() or None
    started = time.perf_counter()
    Distiller(config, resume=resume).train()
    return time.perf_counter() - started


def stage_teacher(cfg: RecipeConfig, out: Path) -> dict:
    directory = out / "teacher"
    if (done := _stage_done(directory)) is not None:
        return done
    sf = _stage_done(out / "vae")["scaling_factor"]
    steps = cfg.steps(cfg.teacher_steps)
    config = _train_config(cfg, out, "teacher", TEACHER_CONFIG, steps, 0, False, None, sf)
    return _finish_stage(directory, {"steps": steps, "seconds": _train(config)})


def student_runs(cfg: RecipeConfig) -> list[tuple[str, bool, int]]:
    return [
        (f"student-{'kd' if kd else 'nokd'}-seed{seed}", kd, seed)
        for seed in cfg.seeds
        for kd in (True, False)
    ]


def stage_students(cfg: RecipeConfig, out: Path) -> dict:
    sf = _stage_done(out / "vae")["scaling_factor"]
    steps = cfg.steps(cfg.student_steps)
    results = {}
    for name, kd, seed in student_runs(cfg):
        if (done := _stage_done(out / name)) is None:
            config = _train_config(
                cfg, out, name, STUDENT_CONFIG, steps, seed, kd, str(out / "teacher" / "final"), sf
            )
            done = _finish_stage(
                out / name, {"steps": steps, "kd": kd, "seed": seed, "seconds": _train(config)}
            )
        results[name] = done
    return results


# ---------------------------------------------------------------------------- evaluation
def _heldout(out: Path) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    directory = out / "data" / "heldout"
    names = sorted(p.stem for p in directory.glob("*.png") if not p.stem.endswith("_mask"))
    images = [np.asarray(Image.open(directory / f"{n}.png").convert("RGB")) for n in names]
    masks = [
        (np.asarray(Image.open(directory / f"{n}_mask.png")) > 127).astype(np.uint8) for n in names
    ]
    return names, images, masks


def _load_pipeline(out: Path, model_dir: Path):
    from diffusers import AutoencoderKL

    from moebius.models import from_pretrained
    from moebius.pipeline import MoebiusInpaintPipeline

    vae = AutoencoderKL.from_pretrained(out / "vae" / "vae", low_cpu_mem_usage=False)
    pipe = MoebiusInpaintPipeline(from_pretrained(model_dir), vae)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _inpaint(pipe, images, masks, cfg: RecipeConfig) -> list[np.ndarray]:
    result = pipe(
        image=[Image.fromarray(i) for i in images],
        mask_image=[Image.fromarray(m * 255) for m in masks],
        num_inference_steps=cfg.sample_steps,
        guidance_scale=cfg.guidance,
        generator=0,
        strategy="original",
    )
    return [np.asarray(im) for im in result.images]


@torch.no_grad()
def _eps_error(pipe, images, masks, timesteps: list[int]) -> float:
    """MSE between predicted and true noise on held-out latents, mean over fixed timesteps."""
    from moebius.models.lcg import category_ids
    from moebius.sampling import NoiseSchedule

    vae, model = pipe.vae, pipe.model
    sf = vae.config.scaling_factor
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    m = torch.from_numpy(np.stack(masks))[:, None].float()
    latents = vae.encode(x).latent_dist.mode() * sf
    masked = vae.encode(x * (1 - m)).latent_dist.mode() * sf
    mask_lat = torch.nn.functional.interpolate(m, size=latents.shape[2:], mode="nearest")
    schedule = NoiseSchedule()
    generator = torch.Generator().manual_seed(0)
    ids = category_ids("background", len(images))
    errors = []
    for t in timesteps:
        noise = torch.randn(latents.shape, generator=generator)
        noisy = schedule.add_noise(latents, noise, t)
        eps = model(torch.cat([noisy, mask_lat, masked], 1), t, ids).sample
        errors.append(float((eps - noise).square().mean()))
    return float(np.mean(errors))


def _step_times(models: dict, repeats: int = 15) -> dict[str, float]:
    """Median seconds per CFG-batch (2) forward at the training latent size, interleaved."""
    side = IMAGE_SIZE // 8
    x = torch.randn(2, 9, side, side)
    ids = torch.cat([torch.arange(10, 20)[None], torch.arange(10)[None]])
    times = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            model(x, 500, ids)
        for _ in range(repeats):
            for name, model in models.items():
                started = time.perf_counter()
                model(x, 500, ids)
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def _telea(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import cv2

    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    return cv2.cvtColor(cv2.inpaint(bgr, mask * 255, 3, cv2.INPAINT_TELEA), cv2.COLOR_BGR2RGB)


def _scores(predictions, images, masks) -> dict[str, float]:
    from moebius.eval.pixel import psnr, ssim

    return {
        "masked_psnr": float(
            np.mean([psnr(p, i, m) for p, i, m in zip(predictions, images, masks, strict=True)])
        ),
        "masked_ssim": float(
            np.mean([ssim(p, i, m) for p, i, m in zip(predictions, images, masks, strict=True)])
        ),
    }


def stage_eval(cfg: RecipeConfig, out: Path) -> dict:
    directory = out / "eval"
    if (done := _stage_done(directory)) is not None:
        return done
    names, images, masks = _heldout(out)
    rows: dict[str, dict] = {}
    samples: dict[str, list[np.ndarray]] = {}
    pipes = {"teacher": _load_pipeline(out, out / "teacher" / "final")}
    for name, _, _ in student_runs(cfg):
        pipes[name] = _load_pipeline(out, out / name / "final")
    for name, pipe in pipes.items():
        samples[name] = _inpaint(pipe, images, masks, cfg)
        rows[name] = _scores(samples[name], images, masks)
        rows[name]["eps_mse"] = _eps_error(pipe, images, masks, cfg.eps_timesteps)
        rows[name]["parameters"] = sum(p.numel() for p in pipe.model.parameters())
    samples["telea"] = [_telea(i, m) for i, m in zip(images, masks, strict=True)]
    rows["telea"] = _scores(samples["telea"], images, masks)
    first_kd, first_nokd = student_runs(cfg)[0][0], student_runs(cfg)[1][0]
    times = _step_times({"teacher": pipes["teacher"].model, "student": pipes[first_kd].model})

    for name, picture in (
        ("masked", [i * (1 - m[..., None]) for i, m in zip(images, masks, strict=True)]),
        ("truth", images),
    ):
        samples[name] = picture
    _write_contact_sheet(
        directory / "contact_sheet.png",
        samples,
        ["masked", "telea", "teacher", first_kd, first_nokd, "truth"],
    )
    _write_loss_plot(directory / "loss.png", out, cfg)
    result = {
        "rows": rows,
        "step_seconds": times,
        "heldout": names,
        "summary": _summary(rows, cfg),
        "config": asdict(cfg),
        "stages": {s: _stage_done(out / s) for s in ("data", "vae", "teacher")}
        | {n: _stage_done(out / n) for n, _, _ in student_runs(cfg)},
    }
    return _finish_stage(directory, result)


def _summary(rows: dict, cfg: RecipeConfig) -> dict:
    summary = {}
    for kd in (True, False):
        label = "kd" if kd else "nokd"
        runs = [rows[n] for n, k, _ in student_runs(cfg) if k == kd]
        for metric in ("masked_psnr", "masked_ssim", "eps_mse"):
            values = [r[metric] for r in runs]
            summary[f"{label}_{metric}"] = {
                "mean": float(np.mean(values)),
                "min": float(min(values)),
                "max": float(max(values)),
            }
    return summary


def _write_contact_sheet(path: Path, samples: dict, columns: list[str], rows: int = 6) -> None:
    tiles = [
        np.concatenate([samples[c][i] for c in columns], axis=1)
        for i in range(min(rows, len(samples[columns[0]])))
    ]
    sheet = Image.fromarray(np.concatenate(tiles, axis=0).astype(np.uint8))
    atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"))


def _write_loss_plot(path: Path, out: Path, cfg: RecipeConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for name in ["teacher"] + [n for n, _, _ in student_runs(cfg)]:
        metrics = out / name / "metrics.csv"
        if not metrics.exists():
            continue
        import csv

        with metrics.open() as handle:
            records = list(csv.DictReader(handle))
        steps = [int(r["step"]) for r in records]
        task = [float(r["task"]) for r in records]
        axis.plot(steps, task, label=name, linewidth=1)
    axis.set_xlabel("step")
    axis.set_ylabel("task loss (ε MSE)")
    axis.set_yscale("log")
    axis.legend(fontsize=7)
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))
    plt.close(figure)


# ---------------------------------------------------------------------------- report
def write_report(result: dict, out: Path, docs: Path) -> Path:
    """docs/small_scale.md (+ images) from the eval stage's JSON; every number comes from it."""
    import platform
    import shutil

    cfg = result["config"]
    images = docs / "images"
    images.mkdir(parents=True, exist_ok=True)
    for name in ("contact_sheet.png", "loss.png"):
        shutil.copyfile(out / "eval" / name, images / f"small_scale_{name}")
    rows, summary = result["rows"], result["summary"]

    def row(name: str) -> str:
        r = rows[name]
        params = f"{r['parameters'] / 1e6:.2f} M" if "parameters" in r else "—"
        eps = f"{r['eps_mse']:.4f}" if "eps_mse" in r else "—"
        return f"| {name} | {params} | {r['masked_psnr']:.2f} | {r['masked_ssim']:.4f} | {eps} |"

    kd, nokd = summary["kd_masked_psnr"], summary["nokd_masked_psnr"]
    kd_eps, nokd_eps = summary["kd_eps_mse"], summary["nokd_eps_mse"]
    verdict = _verdict(kd, nokd, kd_eps, nokd_eps, len(cfg["seeds"]))
    stages = result["stages"]
    minutes = sum(s.get("seconds", 0) for s in stages.values() if s) / 60
    times = result["step_seconds"]
    lines = [
        "# Small-scale reproduction (CPU)",
        "",
        "Generated by `moebius reproduce small` (see `src/moebius/reproduce/small_scale.py`);"
        " every number below comes from that run's `eval/result.json`.",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}.",
        "",
        "## Setup",
        f"- Data: {stages['data']['train_images']} training images from the public-domain / CC0 photos"
        " bundled with scikit-image (licences below); held-out: "
        f"{stages['data']['heldout_crops']} fixed {IMAGE_SIZE}² crops of photos never used in training,"
        " with fixed MAT-style masks (15–45 % holes).",
        f"- VAE: small `AutoencoderKL` (f8, 4 latent channels), {stages['vae']['parameters'] / 1e6:.2f} M"
        f" parameters, {stages['vae']['steps']} steps, reconstruction PSNR"
        f" {stages['vae']['reconstruction_psnr_db']:.1f} dB.",
        f"- Teacher: PixelHacker-shaped (GLA UNet), task loss only, {stages['teacher']['steps']} steps.",
        f"- Students: Moebius-shaped, {cfg['student_steps'] * cfg['scale']:.0f} steps each, seeds"
        f" {cfg['seeds']}: with the paper's distillation (KD) and task loss only (no-KD).",
        f"- Total training time: {minutes:.0f} min.",
        "",
        f"## Results (held-out crops, {cfg['sample_steps']} DDIM steps, guidance"
        f" {cfg['guidance']}, masked-region metrics)",
        "",
        "| model | params | masked PSNR (dB) | masked SSIM | ε-MSE |",
        "|---|---|---|---|---|",
        *[row(name) for name in rows],
        "",
        f"KD students: masked PSNR {kd['mean']:.2f} dB (range {kd['min']:.2f}–{kd['max']:.2f});"
        f" no-KD: {nokd['mean']:.2f} dB (range {nokd['min']:.2f}–{nokd['max']:.2f})."
        f" ε-MSE KD {kd_eps['mean']:.4f} vs no-KD {nokd_eps['mean']:.4f}.",
        "",
        f"**Verdict:** {verdict}",
        "",
        f"Per-step time at the training size (batch 2 = one CFG step): student"
        f" {times['student'] * 1e3:.1f} ms, teacher {times['teacher'] * 1e3:.1f} ms"
        f" (ratio {times['student'] / times['teacher']:.2f}).",
        "",
        "![contact sheet](images/small_scale_contact_sheet.png)",
        "",
        "Columns: masked input, OpenCV Telea, teacher, KD student, no-KD student, ground truth.",
        "",
        "![task loss](images/small_scale_loss.png)",
        "",
        "## Photo licences",
        *[f"- `{p['name']}` ({p['split']}): {p['licence']}" for p in stages["data"]["photos"]],
        "",
    ]
    path = docs / "small_scale.md"
    text = "\n".join(lines)
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return path


def _verdict(kd: dict, nokd: dict, kd_eps: dict, nokd_eps: dict, seeds: int) -> str:
    better_psnr = kd["mean"] > nokd["mean"]
    better_eps = kd_eps["mean"] < nokd_eps["mean"]
    text = (
        f"here, distillation gave {'higher' if better_psnr else 'lower or equal'} masked PSNR"
        f" and {'lower' if better_eps else 'higher or equal'} ε-error than the task loss"
        f" alone (means over {seeds} seed{'s' if seeds > 1 else ''})."
    )
    if seeds < 2:
        return text + " One seed cannot separate the effect from seed noise."
    separated = kd["min"] > nokd["max"] or nokd["min"] > kd["max"]
    return text + (
        " The PSNR ranges over seeds do not overlap."
        if separated
        else " The PSNR ranges over seeds overlap: at this scale the difference is"
        " within seed noise."
    )


def bundle_demo(out: Path, destination: Path, cfg: RecipeConfig) -> None:
    """The first KD student + the VAE as a float16 pipeline directory (small enough for a wheel)."""
    name = student_runs(cfg)[0][0]
    pipe = _load_pipeline(out, out / name / "final")
    pipe.model.half()
    pipe.vae.half()
    pipe.save_pretrained(destination)


def run(cfg: RecipeConfig) -> dict:
    out = Path(cfg.out)
    stage_data(cfg, out)
    stage_vae(cfg, out)
    stage_teacher(cfg, out)
    stage_students(cfg, out)
    result = stage_eval(cfg, out)
    if cfg.docs:
        write_report(result, out, Path(cfg.docs))
    if cfg.bundle:
        bundle_demo(out, Path(cfg.bundle), cfg)
    return result
