"""``evaluate``: inpaint a protocol's images (resumable, batched), then score them.

Layout of ``out_dir``::

    predictions/<stem>.png   the model's outputs (skipped when present: reruns resume)
    masks/<stem>.png         the masks used, white = hole (feed them to other tools)
    run.json                 the settings the saved files were made with (checked on resume)
    inputs/<stem>.png        the masked inputs at protocol size, hole shown grey
    per_image.jsonl          PSNR / SSIM / LPIPS per image
    metrics.json             everything, including settings, seeds, intervals and warnings
    results.md               a markdown table: the paper's row and this run's
    contact_sheet.png        input / mask / ours / ground truth for the first images
"""

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from moebius.distributed import SINGLE, World
from moebius.errors import InputError
from moebius.eval.data import MaskSet, list_images, prepare_image
from moebius.eval.protocols import ALL_METRICS, Protocol, get_protocol
from moebius.eval.report import json_safe, write_contact_sheet, write_json, write_markdown
from moebius.files import atomic_write, remove_stale_temporaries
from moebius.image_io import IMAGE_EXTENSIONS
from moebius.settings import InpaintSettings, Strategy, item_seed
from moebius.work import chunks, pending, run_chunks

# below this many images FID is noticeably biased upwards (Chong & Forsyth 2020; Heusel et al.)
FID_MIN_IMAGES = 2_000
CONTACT_ROWS = 8


@dataclass
class EvalConfig:
    protocol: str
    images: str
    out_dir: str
    masks: str | None = None
    masks_white: str | None = None  # "keep" | "hole"; default from the protocol
    predictions: str | None = None  # score these instead of running a model
    model_name: str = "model"
    limit: int | None = None
    seed: int = 0
    batch_size: int = 4
    settings: InpaintSettings = field(default_factory=InpaintSettings)  # strategy: original
    hole_fill: str = "original"  # what the model sees inside the hole: "original" or "gray"
    lpips_net: str = "alex"
    metrics: tuple[str, ...] = ALL_METRICS
    weights_dir: str | None = None
    download: bool | None = None
    random_weights: bool = False  # untrained extractors: tests only, marked in every output
    bootstrap: int = 100
    inception_size: int = 299  # FID's definition; smaller values only for smoke tests
    device: str = "cpu"


def _save_png(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def _load_rgb(path: Path) -> np.ndarray:
    from moebius.image_io import load_image

    return np.asarray(load_image(path))


def _signed_unit(images: list[np.ndarray], device: torch.device) -> torch.Tensor:
    """uint8 (H, W, 3) images → float (B, 3, H, W) in [-1, 1], LPIPS' input range."""
    batch = torch.from_numpy(np.stack(images)).to(device).permute(0, 3, 1, 2)
    return batch.float() / 127.5 - 1


def _masked_input(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.where(mask[..., None] > 0, np.uint8(127), image)


def run_inference(
    pipeline,
    cfg: EvalConfig,
    images: list[Path],
    masks: MaskSet,
    resolution: int,
    todo: list[range],
    world: World = SINGLE,
) -> int | None:
    """Write ``predictions/<stem>.png`` for the images of the chunks in ``todo`` (this rank's
    share of them); returns on rank 0 how many were made by all ranks (None on the others).

    Each image's noise comes from its own seed, derived from the run's seed and the image's
    name (:func:`moebius.settings.item_seed`); batches are fixed chunks of the sorted list and a
    chunk with any prediction missing is redone whole, so a resumed run, or one with another
    number of processes, writes exactly what an uninterrupted single process would."""
    out = Path(cfg.out_dir)
    settings = replace(cfg.settings, strategy=Strategy.ORIGINAL)
    pipeline.set_progress_bar_config(disable=True)

    def inpaint(chunk: range) -> int:
        inputs, mask_images = [], []
        for i in chunk:
            image, mask = prepare_image(images[i], resolution), masks(i)
            if cfg.hole_fill == "gray":
                image = _masked_input(image, mask)
            inputs.append(Image.fromarray(image))
            mask_images.append(Image.fromarray(mask * 255))
        seeds = [item_seed(cfg.seed, images[i].stem) for i in chunk]
        result = pipeline(inputs, mask_images, settings=settings, generator=seeds)
        for i, prediction in zip(chunk, result.images, strict=True):
            _save_png(_prediction_path(out, images[i]), np.asarray(prediction))
        return len(chunk)

    made = run_chunks(
        world,
        todo,
        inpaint,
        lambda chunk: _names(images, chunk),
        total=len(images),
        done=len(images) - sum(len(chunk) for chunk in todo),
        desc="inpainting",
    )
    return None if made is None else sum(made)


def _names(images: list[Path], chunk: range) -> str:
    return ", ".join(images[i].name for i in chunk)


def _prediction_path(out: Path, image: Path) -> Path:
    return out / "predictions" / f"{image.stem}.png"


def _find_prediction(directory: Path, stem: str) -> Path:
    for ext in IMAGE_EXTENSIONS:
        if (directory / f"{stem}{ext}").is_file():
            return directory / f"{stem}{ext}"
    raise InputError(f"no prediction for image {stem!r} in {directory} (expected {stem}.png)")


def _bootstrap(
    n: int,
    real: torch.Tensor | None,
    fake: torch.Tensor | None,
    lpips: np.ndarray | None,
    samples: int,
    seed: int,
) -> dict[str, list[float]]:
    """95 % percentile intervals of FID and mean LPIPS over images resampled with replacement."""
    from moebius.eval.fid import fid_from_features

    rng = np.random.default_rng(seed)
    fids, lpipses = [], []
    for _ in tqdm(range(samples), desc="bootstrap", leave=False):
        idx = torch.from_numpy(rng.integers(0, n, n))
        if real is not None:
            fids.append(fid_from_features(real[idx], fake[idx]))
        if lpips is not None:
            lpipses.append(float(lpips[idx.numpy()].mean()))
    intervals = {}
    for key, values in (("fid", fids), ("lpips", lpipses)):
        if values:
            intervals[key] = [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]
    return intervals


def load_extractors(cfg: EvalConfig) -> dict:
    """The feature networks the requested metrics need, loaded before any inference so that
    missing weight files fail fast. Returns {"inception", "lpips", "info"}."""
    wanted = set(cfg.metrics)
    unknown = wanted - set(ALL_METRICS)
    if unknown:
        raise InputError(f"unknown metrics {sorted(unknown)}; choose from {', '.join(ALL_METRICS)}")
    device = torch.device(cfg.device)
    loaded = {"inception": None, "lpips": None, "info": {}}
    if wanted & {"fid", "u_ids", "p_ids"}:
        from moebius.eval.inception import InceptionFeatures

        inception = InceptionFeatures.load(
            cfg.weights_dir, cfg.random_weights, cfg.download, input_size=cfg.inception_size
        )
        loaded["inception"] = inception.to(device)
        loaded["info"]["inception"] = {
            "weights": inception.weights,
            "random_weights": inception.random_weights,
            "input_size": inception.input_size,
        }
    if "lpips" in wanted:
        from moebius.eval.lpips import LPIPS

        lpips = LPIPS.load(cfg.lpips_net, cfg.weights_dir, cfg.random_weights, cfg.download)
        loaded["lpips"] = lpips.to(device)
        loaded["info"][f"lpips-{cfg.lpips_net}"] = {
            "weights": lpips.weights,
            "random_weights": lpips.random_weights,
        }
    return loaded


@dataclass
class _ChunkScores:
    """What scoring one chunk yields, gathered to rank 0 in image order."""

    records: list[dict]  # per image: name, hole ratio, LPIPS, PSNR, SSIM
    real: torch.Tensor | None  # Inception features of the ground truths (CPU)
    fake: torch.Tensor | None  # … and of the predictions
    sheet: list[tuple]  # contact-sheet rows of the job's first images
    resized: int  # predictions that were not at protocol size


def _score_chunk(
    cfg: EvalConfig,
    protocol: Protocol,
    images: list[Path],
    masks: MaskSet,
    predictions: Path,
    extractors: dict,
    chunk: range,
) -> _ChunkScores:
    from moebius.eval.pixel import psnr, ssim_from_map, ssim_map

    out = Path(cfg.out_dir)
    device = torch.device(cfg.device)
    wanted = set(cfg.metrics)
    inception, lpips_net = extractors["inception"], extractors["lpips"]
    resolution = protocol.resolution
    gts, preds, holes, sheet, resized = [], [], [], [], 0
    for i in chunk:
        gt, mask = prepare_image(images[i], resolution), masks(i)
        pred = _load_rgb(_find_prediction(predictions, images[i].stem))
        if pred.shape != gt.shape:
            resized += 1
            pred = np.asarray(Image.fromarray(pred).resize(gt.shape[1::-1], Image.LANCZOS))
        masked = _masked_input(gt, mask)
        for folder, array in (("masks", mask * 255), ("inputs", masked)):
            if not (out / folder / f"{images[i].stem}.png").is_file():  # same on every run
                _save_png(out / folder / f"{images[i].stem}.png", array)
        if i < CONTACT_ROWS:
            sheet.append((masked, mask * 255, pred, gt))
        gts.append(gt)
        preds.append(pred)
        holes.append(mask)
    real = fake = None
    if inception is not None:
        features = inception(gts + preds)
        real, fake = features[: len(gts)], features[len(gts) :]
    distances = [math.nan] * len(gts)
    if lpips_net is not None:
        with torch.inference_mode():
            pair = (_signed_unit(preds, device), _signed_unit(gts, device))
            distances = lpips_net(*pair).cpu().tolist()
    records = []
    for i, pred, gt, hole, distance in zip(chunk, preds, gts, holes, distances, strict=True):
        record = {"image": images[i].name, "hole_ratio": float(hole.mean())}
        if "lpips" in wanted:
            record["lpips"] = distance
        if "psnr" in wanted:
            record["psnr"] = psnr(pred, gt)
        if "psnr_hole" in wanted:
            record["psnr_hole"] = psnr(pred, gt, hole)
        if wanted & {"ssim", "ssim_hole"}:
            smap = ssim_map(pred, gt, device=device)
            if "ssim" in wanted:
                record["ssim"] = ssim_from_map(smap)
            if "ssim_hole" in wanted:
                record["ssim_hole"] = ssim_from_map(smap, hole)
        records.append(record)
    return _ChunkScores(records, real, fake, sheet, resized)


def score(
    cfg: EvalConfig,
    protocol: Protocol,
    images: list[Path],
    masks: MaskSet,
    predictions: Path,
    extractors: dict,
    world: World = SINGLE,
) -> dict | None:
    """All metrics for (prediction, ground truth, mask) triples; returns the metrics.json body
    on rank 0 (None on the others). Each rank scores its share of the chunks; rank 0 gathers
    the per-image values and features in image order, so every score, bootstrap intervals
    included, equals a single process's."""
    parts = run_chunks(
        world,
        chunks(len(images), cfg.batch_size),
        lambda chunk: _score_chunk(cfg, protocol, images, masks, predictions, extractors, chunk),
        lambda chunk: _names(images, chunk),
        total=len(images),
        desc="scoring",
    )
    if parts is None:
        return None
    out = Path(cfg.out_dir)
    device = torch.device(cfg.device)
    wanted = set(cfg.metrics)
    inception = extractors["inception"]
    resolution = protocol.resolution
    records = [record for part in parts for record in part.records]
    sheet = [row for part in parts for row in part.sheet]
    resized = sum(part.resized for part in parts)
    text = "".join(json.dumps(json_safe(r)) + "\n" for r in records)
    atomic_write(out / "per_image.jsonl", lambda tmp: Path(tmp).write_text(text))

    metrics: dict[str, float] = {}
    for key in ("lpips", "psnr", "ssim", "psnr_hole", "ssim_hole"):
        if key in wanted:
            values = np.array([r[key] for r in records], np.float64)
            values = values[np.isfinite(values)]  # identical images (PSNR ∞) or empty holes
            metrics[key] = float(values.mean()) if len(values) else math.nan
    real = fake = None
    if inception is not None:
        from moebius.eval.fid import fid_from_features
        from moebius.eval.ids import inception_discriminative_scores

        real = torch.cat([part.real for part in parts])
        fake = torch.cat([part.fake for part in parts])
        if "fid" in wanted:
            metrics["fid"] = fid_from_features(fake, real) if len(images) >= 2 else math.nan
        if wanted & {"u_ids", "p_ids"}:
            u_ids, p_ids = inception_discriminative_scores(real, fake)
            metrics.update({k: v for k, v in (("u_ids", u_ids), ("p_ids", p_ids)) if k in wanted})

    warnings = []
    if cfg.random_weights:
        warnings.append(
            "RANDOM-WEIGHT feature extractors (testing only): FID/LPIPS/IDS are meaningless"
        )
    if "fid" in wanted and len(images) < FID_MIN_IMAGES:
        warnings.append(
            f"FID on {len(images)} images is biased upwards (use ≥ {FID_MIN_IMAGES}; the paper's "
            f"sets have {protocol.expected_images or 'thousands of'} images)"
        )
    if resized:
        warnings.append(
            f"{resized} predictions were not {resolution}×{resolution}; resized (Lanczos)"
        )
    intervals = {}
    if cfg.bootstrap > 0 and len(images) >= 2:
        lp = np.array([r["lpips"] for r in records]) if "lpips" in wanted else None
        # resampled FIDs are many float64 decompositions: run them on the metric device
        fid_real = real.to(device) if "fid" in wanted else None
        fid_fake = fake.to(device) if "fid" in wanted else None
        intervals = _bootstrap(len(images), fid_real, fid_fake, lp, cfg.bootstrap, cfg.seed)
    return {
        "metrics": metrics,
        "intervals": intervals,
        "bootstrap": {"samples": cfg.bootstrap, "confidence": 0.95, "seed": cfg.seed},
        "extractors": extractors["info"],
        "random_weights": cfg.random_weights,
        "warnings": warnings,
        "_sheet": sheet,
    }


def evaluate(cfg: EvalConfig, pipeline=None, world: World = SINGLE) -> dict:
    """Run (or resume) inference with ``pipeline`` unless ``cfg.predictions`` is set, then score.

    Returns the ``metrics.json`` content and writes every file listed in the module docstring.
    ``world``: this process's place in a torchrun job (see :mod:`moebius.distributed`); every
    rank calls this, each inpaints and scores its share, rank 0 writes the summary files, and
    every rank returns the same result.
    """
    started = time.time()
    protocol = get_protocol(cfg.protocol)
    if cfg.hole_fill not in ("original", "gray"):
        raise InputError(f"hole fill must be 'original' or 'gray', got {cfg.hole_fill!r}")
    if cfg.batch_size < 1:
        raise InputError("--batch-size must be at least 1")
    if cfg.predictions is None:  # fail before any file is written
        cfg.settings.validate()
    if cfg.predictions is None and pipeline is None:
        raise InputError("give a model to run or --predictions DIR to score")
    if cfg.predictions is not None and not Path(cfg.predictions).is_dir():
        raise InputError(f"predictions folder not found: {cfg.predictions}")
    images = list_images(cfg.images, cfg.limit)
    world.require_same("\n".join(map(str, images)), f"images in {cfg.images}")
    masks = MaskSet(protocol, images, cfg.masks, cfg.masks_white, cfg.seed)
    out = Path(cfg.out_dir)
    todo = world.run_on_main(lambda: _prepare(cfg, out, images, masks))
    world.require_shared(out / "run.json")
    extractors = world.run_everywhere(lambda: load_extractors(cfg), main_first=True)
    if cfg.predictions is not None:
        predictions = Path(cfg.predictions)
        inference = {"predictions": str(predictions)}
    else:
        predictions = out / "predictions"
        made = run_inference(pipeline, cfg, images, masks, protocol.resolution, todo, world)
        inference = {
            "settings": {**cfg.settings.to_dict(), "seed": cfg.seed},
            "hole_fill": cfg.hole_fill,
            "batch_size": cfg.batch_size,
            "seed_rule": "each image's noise is seeded with item_seed(seed, image stem); "
            "batches are fixed chunks of the sorted image list",
            "newly_inpainted": made,
            "device": str(pipeline.device),
            "dtype": str(pipeline.dtype),
        }
    scores = score(cfg, protocol, images, masks, predictions, extractors, world)

    def report() -> dict:
        sheet = scores.pop("_sheet")
        result = {
            "protocol": protocol.name,
            "protocol_details": {**asdict(protocol), "notes": protocol.notes},
            "model": cfg.model_name,
            "num_images": len(images),
            "images": str(cfg.images),
            "seed": cfg.seed,
            "mask_source": masks.source,
            "inference": inference,
            **scores,
            "paper": protocol.paper,
            "versions": _versions(),
            "metric_device": cfg.device,
            "processes": world.size,
            "seconds": round(time.time() - started, 1),
        }
        write_json(out / "metrics.json", result)
        write_markdown(out / "results.md", result)
        write_contact_sheet(out / "contact_sheet.png", sheet)
        return result

    return world.run_on_main(report)


def _prepare(cfg: EvalConfig, out: Path, images: list[Path], masks: MaskSet) -> list[range]:
    """Rank 0 alone, before any file is written: sweep what a killed run left, check (and
    record) the settings, and list the chunks whose predictions are still to make."""
    for folder in (out, out / "predictions", out / "masks", out / "inputs"):
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(folder)
    _check_same_settings(out / "run.json", cfg, masks)
    if cfg.predictions is not None:
        return []
    work = chunks(len(images), cfg.batch_size)
    todo = pending(work, lambda i: _prediction_path(out, images[i]).is_file())
    if len(todo) < len(work):
        print(f"resuming: {len(work) - len(todo)} of {len(work)} batches already done")
    return todo


def _check_same_settings(path: Path, cfg: EvalConfig, masks: MaskSet) -> None:
    """Resuming reuses saved predictions and masks, so refuse an OUT made with other settings."""
    settings = {"protocol": cfg.protocol, "mask_source": masks.source}
    if cfg.predictions is None:
        settings.update(
            model=cfg.model_name,
            **{**cfg.settings.to_dict(), "seed": cfg.seed},
            hole_fill=cfg.hole_fill,
        )
    if path.is_file():
        previous = json.loads(path.read_text())
        changed = sorted(k for k in settings if k in previous and previous[k] != settings[k])
        if changed:
            raise InputError(
                f"{path.parent} holds a run with other settings ({', '.join(changed)} differ); "
                "use a new --out"
            )
        settings = {**previous, **settings}
    text = json.dumps(settings, indent=2) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _versions() -> dict:
    import moebius

    return {"moebius": moebius.__version__, "torch": torch.__version__}
