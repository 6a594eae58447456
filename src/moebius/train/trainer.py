"""The distillation trainer: one process or many (torchrun + DDP), resumable bit-exactly.

Per optimisation step and micro-batch, as the paper distils (in latent space only):
1. latents — from the cache, or by encoding image and masked image with the VAE — drawn as
   posterior samples ``(mean + std·ε)·0.13025``;
2. t = floor(1000·sigmoid(z)), noise = ε + 0.0357·ε' (ε' per sample and channel), x_t;
3. student (DDP) and frozen teacher on cat(x_t, latent mask, masked latent) with LCG ids;
4. the losses and their gradient-norm weights (``moebius.train.losses``), backward.

Reproducibility: every random number of a step is drawn for the *global* batch from one
CPU ``torch.Generator`` (its state is checkpointed) and each rank takes its slice; the data
order is a function of (seed, step) (``StepBatchSampler``). Hence ``--resume`` continues
bit-exactly, and with ``sync_bn`` a 2-process run reproduces a 1-process run of the same
global batch up to float rounding.
"""

import contextlib
import csv
import math
import os
import re
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm

from moebius.distributed import World
from moebius.errors import ConfigError, InputError
from moebius.files import atomic_write
from moebius.models.kd_pairs import coarse_kd_blocks
from moebius.models.lcg import category_ids
from moebius.nn.initialisation import STUDENT_INITS, start_near_identity
from moebius.sampling import NoiseSchedule
from moebius.settings import parse_masked_image_fill
from moebius.train.config import TrainConfig
from moebius.train.data import (
    InpaintingDataset,
    MaskSampler,
    MaskSource,
    StepBatchSampler,
    read_records,
)
from moebius.train.distributed import (
    average_across_ranks,
    convert_sync_batchnorm,
    init_distributed,
)
from moebius.train.latent_cache import (
    LatentCache,
    encode_moments,
    latent_mask,
    masked_images,
    sample_latents,
)
from moebius.train.losses import (
    TIMESTEP_SAMPLERS,
    FeatureAdapter,
    adaptive_weights,
    build_perceptual,
    combine,
    full_precision,
    loss_terms,
)

CHECKPOINT_PATTERN = re.compile(r"step_(\d{8})\.pt$")
METRICS = (
    "loss", "task", "fine", "coarse", "perceptual", "w_fine", "w_perc", "w_coarse",
    "grad_norm", "lr",
)  # fmt: skip


class DistillStudent(nn.Module):
    """The trainable part: student plus the coarse-KD adapter. Returns plain tensors so DDP
    sees every output; ``feature`` is None in no-KD mode."""

    def __init__(self, student: nn.Module, adapter: FeatureAdapter | None, block: int | None):
        super().__init__()
        self.student, self.adapter, self.block = student, adapter, block

    def forward(self, x: torch.Tensor, t: torch.Tensor, ids: torch.Tensor):
        out = self.student(x, t, ids)
        if self.adapter is None:
            return out.sample, None
        return out.sample, self.adapter(out.block_outputs[self.block])


def lr_multiplier(step: int, warmup: int, total: int, kind: str, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then constant / cosine / linear to ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
    if kind == "constant":
        return 1.0
    if kind == "cosine":
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if kind == "linear":
        return 1.0 - (1 - min_ratio) * progress
    raise ConfigError(f"unknown lr schedule {kind!r} (constant, cosine, linear)")


class _FrozenBatchNormStats:
    """Recomputation under gradient checkpointing must not update running statistics twice:
    restores them on exit. Re-enterable (checkpoint may recompute more than once)."""

    def __init__(self, module: nn.Module):
        self.norms = [
            m
            for m in module.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        ]

    def __enter__(self):
        self.saved = [
            (m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
            for m in self.norms
        ]

    def __exit__(self, *exc):
        for m, (mean, var, count) in zip(self.norms, self.saved, strict=True):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)


def _autocast_dtype(name: str, value: str) -> torch.dtype | None:
    if value not in ("bf16", "no"):
        raise ConfigError(f"{name} must be 'bf16' or 'no', got {value!r}")
    return torch.bfloat16 if value == "bf16" else None


def enable_gradient_checkpointing(model: nn.Module, types: tuple[type, ...]) -> int:
    """Recompute the activations of every sub-module of ``types`` in backward (non-reentrant,
    so ``autograd.grad`` works). Returns how many modules were wrapped."""
    wrapped = 0
    for module in model.modules():
        if isinstance(module, types):
            forward = module.forward

            def run(*args, _forward=forward, _module=module):
                if not torch.is_grad_enabled():
                    return _forward(*args)
                return checkpoint(
                    _forward,
                    *args,
                    use_reentrant=False,
                    context_fn=lambda m=_module: (
                        contextlib.nullcontext(),
                        _FrozenBatchNormStats(m),
                    ),
                )

            module.forward = run
            wrapped += 1
    return wrapped


def _find_param(model: nn.Module, name: str) -> nn.Parameter:
    params = dict(model.named_parameters())
    if name not in params:
        raise ConfigError(f"the student has no parameter {name!r}")
    return params[name]


def _default_feature_param(student: nn.Module, block: int) -> str:
    """``proj_out`` of the last transformer of the level whose output is distilled: for the
    paper's block 2 (coarse KD at 16×16) that is the last transformer of down level 2."""
    try:
        down = student.diff_model.down_blocks
        kind, index = (
            ("down_blocks", block) if block < len(down) else ("up_blocks", block - len(down))
        )
        last = len(getattr(student.diff_model, kind)[index].attentions) - 1
    except (AttributeError, IndexError, TypeError) as exc:
        raise ConfigError(
            "set distill.feature_param: the student's layout is not Moebius'"
        ) from exc
    return f"diff_model.{kind}.{index}.attentions.{last}.proj_out.weight"


class Distiller:
    """Builds everything from a :class:`TrainConfig`; pre-built ``student``/``teacher``/``vae``
    objects may be passed instead (Python API, tests). ``train()`` runs to ``max_steps``."""

    def __init__(
        self,
        config: TrainConfig,
        student: nn.Module | None = None,
        teacher: nn.Module | None = None,
        vae: nn.Module | None = None,
        resume: str | os.PathLike | bool | None = None,
        progress: bool = True,
    ):
        self.config = config
        self.dist: World = init_distributed()
        self.device = (
            torch.device("cuda", self.dist.local_rank)
            if torch.cuda.is_available()
            else torch.device("cpu")
        )
        self.progress = progress and self.dist.is_main
        self.output_dir = Path(config.output_dir)
        torch.manual_seed(config.seed)  # model initialisation only; training draws below

        run = config.train
        self.autocast_dtype = _autocast_dtype("mixed_precision", run.mixed_precision)
        self.teacher_autocast_dtype = (
            self.autocast_dtype
            if run.teacher_mixed_precision is None
            else _autocast_dtype("teacher_mixed_precision", run.teacher_mixed_precision)
        )
        if run.dtype not in ("float32", "float64"):
            raise ConfigError(f"train.dtype must be float32 or float64, got {run.dtype!r}")
        self.dtype = getattr(torch, run.dtype)

        self.student = student if student is not None else self._build_student()
        self.student.to(self.device, self.dtype).train()
        self.kd = config.distill.kd
        self.teacher = None
        adapter, block = None, None
        if self.kd:
            self.teacher = teacher if teacher is not None else self._build_teacher()
            self.teacher.to(self.device, self.dtype).eval().requires_grad_(False)
            block, self.teacher_block = self._kd_blocks()
            adapter = self._build_adapter(block).to(self.device, self.dtype)
        self.perceptual = build_perceptual(config.distill.perceptual if self.kd else "none")
        if self.perceptual is not None:
            self.perceptual.to(self.device)
        self.vae = vae if vae is not None else self._build_vae()
        if self.vae is not None:
            self.vae.to(self.device).eval().requires_grad_(False)
            if self.vae.dtype != self.dtype:
                self.vae.to(self.dtype)

        if run.sync_bn:
            convert_sync_batchnorm(self.student)
        if run.gradient_checkpointing:
            from moebius.nn import DWResBlock, Transformer2D

            if not enable_gradient_checkpointing(self.student, (DWResBlock, Transformer2D)):
                warnings.warn(
                    "gradient_checkpointing: this student has no Moebius blocks to checkpoint",
                    stacklevel=2,
                )
        self.module = DistillStudent(self.student, adapter, block)
        self.model = (
            DistributedDataParallel(
                self.module, device_ids=None if self.device.type == "cpu" else [self.device.index]
            )
            if self.dist.size > 1
            else self.module
        )
        self.output_param = self.feature_param = None  # the gradient-norm probes (KD only)
        if self.kd:
            self.output_param = _find_param(self.student, config.distill.output_param)
            feature = config.distill.feature_param or _default_feature_param(self.student, block)
            self.feature_param = _find_param(self.student, feature)
        self.optimizers = self._build_optimizers()
        self.ema = (
            {k: v.detach().clone() for k, v in self.student.state_dict().items()}
            if run.ema_decay
            else None
        )
        self.schedule = NoiseSchedule(prediction_type=config.distill.prediction_type)
        if config.distill.timesteps not in TIMESTEP_SAMPLERS:
            raise ConfigError(
                f"distill.timesteps must be one of {sorted(TIMESTEP_SAMPLERS)}, "
                f"got {config.distill.timesteps!r}"
            )
        self.timestep_sampler = TIMESTEP_SAMPLERS[config.distill.timesteps]
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self._build_data()
        if resume:
            self.load_checkpoint(self.latest_checkpoint() if resume is True else Path(resume))

    # ----------------------------------------------------------------- construction
    def _build_student(self) -> nn.Module:
        from moebius.models.api import build_model, load_model

        cfg = self.config
        if cfg.student_init not in STUDENT_INITS:
            raise ConfigError(
                f"student_init must be one of {', '.join(STUDENT_INITS)}, got {cfg.student_init!r}"
            )
        if cfg.student_checkpoint:
            return load_model(cfg.student, cfg.student_checkpoint).train()
        student = build_model(cfg.student, image_size=cfg.image_size)
        if cfg.student_init == "near-identity":
            start_near_identity(student)
        return student

    def _build_teacher(self) -> nn.Module:
        from moebius.models.api import from_pretrained, load_model

        cfg = self.config
        if isinstance(cfg.teacher, str) and (Path(cfg.teacher) / "config.json").is_file():
            return from_pretrained(cfg.teacher)
        if not cfg.teacher_checkpoint:
            raise ConfigError(
                "teacher_checkpoint is required (a random teacher teaches nothing); "
                "or set distill.kd: false for the no-KD baseline"
            )
        return load_model(cfg.teacher, cfg.teacher_checkpoint)

    def _build_vae(self) -> nn.Module | None:
        if self.config.vae is None:
            if self.config.data.cache is None:
                raise ConfigError("training without a latent cache needs `vae` (a diffusers dir)")
            return None
        from diffusers import AutoencoderKL

        try:
            return AutoencoderKL.from_pretrained(
                self.config.vae, torch_dtype=self.dtype, low_cpu_mem_usage=False
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load the VAE from {self.config.vae}: {exc}") from exc

    def _kd_blocks(self) -> tuple[int, int]:
        d = self.config.distill
        if d.student_block is not None and d.teacher_block is not None:
            return d.student_block, d.teacher_block
        try:
            pair = coarse_kd_blocks(self.student.config.model_type, self.teacher.config.model_type)
        except (KeyError, AttributeError) as exc:
            raise ConfigError(f"{exc}; set distill.student_block and teacher_block") from exc
        return (
            pair[0] if d.student_block is None else d.student_block,
            pair[1] if d.teacher_block is None else d.teacher_block,
        )

    @torch.no_grad()
    def _build_adapter(self, block: int) -> FeatureAdapter:
        """Probe both models once at the training latent size to read the feature widths."""
        side = self.config.image_size // 8
        x = torch.zeros(1, 9, side, side, device=self.device, dtype=self.dtype)
        t = torch.zeros(1, dtype=torch.long, device=self.device)
        ids = torch.arange(10, device=self.device)[None]
        was_training = self.student.training
        self.student.eval()
        student_out = self.student(x, t, ids).block_outputs
        self.student.train(was_training)
        if block >= len(student_out):
            raise ConfigError(f"the student has no block {block}")
        s = student_out[block]
        teacher_out = self.teacher(x, t, ids).block_outputs
        if self.teacher_block >= len(teacher_out):
            raise ConfigError(f"the teacher has no block {self.teacher_block}")
        t_feat = teacher_out[self.teacher_block]
        if s.shape[2:] != t_feat.shape[2:]:
            raise ConfigError(
                f"student block {block} is {tuple(s.shape[2:])} but teacher block "
                f"{self.teacher_block} is {tuple(t_feat.shape[2:])}; choose blocks of equal size"
            )
        return FeatureAdapter(s.shape[1], t_feat.shape[1])

    def _build_optimizers(self) -> list[torch.optim.Optimizer]:
        o = self.config.optim
        named = [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]
        if o.optimizer == "adamw":
            muon_params, adam_params = [], [p for _, p in named]
        elif o.optimizer == "muon":
            if not hasattr(torch.optim, "Muon"):
                raise ConfigError("this torch has no torch.optim.Muon; use optimizer: adamw")
            # Muon orthogonalises 2-D updates; embeddings, vectors and conv kernels use AdamW
            muon_params = [p for n, p in named if p.ndim == 2 and "embedding_layer" not in n]
            chosen = {id(p) for p in muon_params}
            adam_params = [p for _, p in named if id(p) not in chosen]
        else:
            raise ConfigError(f"unknown optimizer {o.optimizer!r} (muon, adamw)")
        optimizers = [
            torch.optim.AdamW(
                adam_params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay
            )
        ]
        if muon_params:
            optimizers.append(
                torch.optim.Muon(
                    muon_params,
                    lr=o.lr,
                    weight_decay=o.weight_decay,
                    momentum=o.muon_momentum,
                    adjust_lr_fn=o.muon_adjust_lr,
                )
            )
        return optimizers

    def _mask_sampler(self) -> MaskSampler:
        d = self.config.data
        sources = [MaskSource(m.kind, m.weight, m.config, tuple(m.hole_range)) for m in d.masks]
        return MaskSampler(sources, d.dataset_mask_prob, tuple(d.dilate) if d.dilate else None)

    def _build_data(self) -> None:
        cfg, d, run = self.config, self.config.data, self.config.train
        parse_masked_image_fill(d.masked_image_fill, ConfigError)
        if d.cache:
            self.dataset = LatentCache(d.cache, seed=cfg.seed)
            if self.dataset.index["image_size"] != cfg.image_size:
                raise ConfigError(
                    f"the cache was written at {self.dataset.index['image_size']} px but "
                    f"image_size is {cfg.image_size}"
                )
            cached_fill = self.dataset.index.get("masked_image_fill", "none")
            if cached_fill != d.masked_image_fill:
                raise ConfigError(
                    f"the cache's masked images hold {cached_fill!r} in the hole but "
                    f"data.masked_image_fill is {d.masked_image_fill!r}"
                )
        else:
            if not d.train:
                raise ConfigError("data.train (a JSONL file or an image folder) is required")
            records = read_records(d.train, d.prompt)
            self.dataset = InpaintingDataset(
                records,
                cfg.image_size,
                self._mask_sampler(),
                cfg.seed,
                d.flip,
                tuple(d.short_side) if d.short_side else None,
            )
        self.val_records = None
        if run.sample_every and self.vae is not None and self.dist.is_main:
            source = d.val or d.train
            if source:
                self.val_records = read_records(source, d.prompt)[: run.num_val_samples]

    def _loader(self, start_micro: int, num_micro: int) -> torch.utils.data.DataLoader:
        sampler = StepBatchSampler(
            len(self.dataset),
            self.config.train.batch_size,
            self.dist.size,
            self.dist.rank,
            self.config.seed,
            start_micro,
            num_micro,
        )
        workers = self.config.data.num_workers
        return torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=sampler,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=2 if workers else None,
        )

    # ----------------------------------------------------------------- one step
    def _draw(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Draw for the global batch, keep this rank's slice (identical to a 1-process run)."""
        b = shape[0]
        full = torch.randn(
            (b * self.dist.size, *shape[1:]), generator=self.generator, dtype=self.dtype
        )
        return full[self.dist.rank * b : (self.dist.rank + 1) * b].to(self.device)

    def _inputs(self, batch: dict[str, torch.Tensor]):
        """→ (model input, timesteps, ids, noise, x0) for one micro-batch."""
        sf = self.config.scaling_factor
        ids = batch["input_ids"].to(self.device)
        if "moments" in batch:
            moments = batch["moments"].to(self.device, self.dtype)
            masked = batch["masked_moments"].to(self.device, self.dtype)
            mask = batch["mask"].to(self.device, self.dtype)
        else:
            images = batch["image"].to(self.device, self.dtype)
            pixel_mask = batch["mask"].to(self.device, self.dtype)
            moments = encode_moments(self.vae, images)
            fill = self.config.data.masked_image_fill
            masked = encode_moments(self.vae, masked_images(images, pixel_mask, fill))
            mask = latent_mask(pixel_mask, moments.shape[2:])
        b, c2, h, w = moments.shape
        latent = (b, c2 // 2, h, w)
        x0 = sample_latents(moments, self._draw(latent), sf)
        masked_latent = sample_latents(masked, self._draw(latent), sf)
        noise = self._draw(latent)
        noise = noise + self.config.distill.noise_offset * self._draw((b, c2 // 2, 1, 1))
        t = self.timestep_sampler(self._draw((b,)), self.schedule.num_train_timesteps)
        t = t.to(self.device)
        x_t = self.schedule.add_noise(x0, noise, t)
        if self.config.data.foreground_prob > 0:
            # a normal draw below the p-quantile is a Bernoulli(p) from the checkpointed stream
            threshold = float(torch.special.ndtri(torch.tensor(self.config.data.foreground_prob)))
            relabel = (self._draw((b,)) < threshold).to(self.device)
            ids = torch.where(relabel[:, None], category_ids("foreground", b, self.device), ids)
        return torch.cat([x_t, mask, masked_latent], dim=1), t, ids, noise, x0

    def _autocast(self, dtype: torch.dtype | None):
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def micro_step(self, batch: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
        """Forward, losses, adaptive weights and backward (gradients scaled by ``scale``)."""
        x, t, ids, noise, x0 = self._inputs(batch)
        with self._autocast(self.autocast_dtype):
            eps, feature = self.model(x, t, ids)
        teacher_eps = teacher_feature = None
        if self.teacher is not None:
            with torch.no_grad(), self._autocast(self.teacher_autocast_dtype):
                out = self.teacher(x, t, ids)
            teacher_eps, teacher_feature = out.sample, out.block_outputs[self.teacher_block]
        x0_student = None
        if self.perceptual is not None:
            implied_noise = self.schedule.epsilon(x[:, :4], full_precision(eps), t)
            x0_student = self.schedule.predict_x0(x[:, :4], implied_noise, t)
        target = self.schedule.target(x0, noise, t)
        terms = loss_terms(
            eps, target, teacher_eps, feature, teacher_feature, x0_student, x0, self.perceptual
        )
        reduce = average_across_ranks if self.dist.size > 1 else None
        weights = (
            adaptive_weights(terms, self.output_param, self.feature_param, reduce)
            if self.kd
            else {}
        )
        loss = combine(terms, weights)
        (loss * scale).backward()
        logged = {"loss": loss.detach(), "task": terms.task.detach(), **weights}
        for name in ("fine", "coarse", "perceptual"):
            value = getattr(terms, name)
            if value is not None:
                logged[name] = value.detach()
        return logged

    def optimizer_step(self) -> dict[str, float]:
        cfg = self.config
        lr = cfg.optim.lr * lr_multiplier(
            self.step,
            cfg.optim.warmup_steps,
            cfg.train.max_steps,
            cfg.optim.schedule,
            cfg.optim.min_lr_ratio,
        )
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr
        params = [p for p in self.module.parameters() if p.grad is not None]
        max_norm = cfg.optim.max_grad_norm if cfg.optim.max_grad_norm > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        for opt in self.optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        if self.ema is not None:
            self._update_ema(cfg.train.ema_decay)
        self.step += 1
        return {"lr": lr, "grad_norm": float(grad_norm)}

    @torch.no_grad()
    def _update_ema(self, decay: float) -> None:
        for name, value in self.student.state_dict().items():
            if value.dtype.is_floating_point:
                self.ema[name].lerp_(value, 1.0 - decay)
            else:
                self.ema[name].copy_(value)

    # ----------------------------------------------------------------- loop
    def train(self) -> dict[str, float]:
        """Run until ``train.max_steps``; returns the last logged metrics."""
        run = self.config.train
        accum = run.grad_accum
        remaining = run.max_steps - self.step
        last: dict[str, float] = {}
        if remaining <= 0:
            return last
        loader = self._loader(self.step * accum, remaining * accum)
        logger = _MetricsLogger(
            self.output_dir, self.dist.is_main and run.log_every > 0, run.tensorboard
        )
        bar = tqdm(
            total=run.max_steps, initial=self.step, desc="distill", disable=not self.progress
        )
        totals: dict[str, torch.Tensor] = {}
        started = time.perf_counter()
        try:
            for micro, batch in enumerate(loader):
                final = (micro + 1) % accum == 0
                skip_sync = self.dist.size > 1 and not final  # accumulate locally, reduce once
                sync = self.model.no_sync() if skip_sync else contextlib.nullcontext()
                with sync:
                    logged = self.micro_step(batch, 1.0 / accum)
                for k, v in logged.items():
                    totals[k] = totals.get(k, 0.0) + v / accum
                if not final:
                    continue
                info = self.optimizer_step()
                bar.update(1)
                if run.log_every and self.step % run.log_every == 0:
                    last = {k: float(average_across_ranks(v)) for k, v in sorted(totals.items())}
                    last.update(info, step=self.step, seconds=time.perf_counter() - started)
                    logger.log(self.step, last)
                    bar.set_postfix(loss=f"{last['loss']:.4f}", task=f"{last['task']:.4f}")
                totals = {}
                if run.checkpoint_every and self.step % run.checkpoint_every == 0:
                    self.save_checkpoint()
                if run.sample_every and self.step % run.sample_every == 0:
                    self.write_samples()
        finally:
            bar.close()
            logger.close()
        if run.checkpoint_every and self.step % run.checkpoint_every != 0:
            self.save_checkpoint()
        self.export()
        return last

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "model": self.module.state_dict(),
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "ema": self.ema,
            "generator": self.generator.get_state(),
            "global_batch": self.config.train.batch_size
            * self.dist.size
            * self.config.train.grad_accum,
            "config": self.config.to_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        global_batch = self.config.train.batch_size * self.dist.size * self.config.train.grad_accum
        if state["global_batch"] != global_batch:
            raise ConfigError(
                f"the checkpoint was trained with global batch {state['global_batch']}, this run "
                f"has {global_batch}: the data order would change; keep the global batch"
            )
        self.module.load_state_dict(state["model"])
        for opt, opt_state in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(opt_state)
        if self.ema is not None:
            if state["ema"] is None:
                raise ConfigError("the checkpoint has no EMA weights but ema_decay is set")
            for k, v in state["ema"].items():
                self.ema[k].copy_(v)
        self.generator.set_state(state["generator"])
        self.step = state["step"]

    def checkpoint_dir(self) -> Path:
        return self.output_dir / "checkpoints"

    def latest_checkpoint(self) -> Path:
        found = sorted(
            p for p in self.checkpoint_dir().glob("step_*.pt") if CHECKPOINT_PATTERN.search(p.name)
        )
        if not found:
            raise InputError(f"nothing to resume: no checkpoints in {self.checkpoint_dir()}")
        return found[-1]

    def save_checkpoint(self) -> Path:
        path = self.checkpoint_dir() / f"step_{self.step:08d}.pt"
        if self.dist.is_main:
            state = self.state_dict()
            atomic_write(path, lambda tmp: torch.save(state, tmp))
            keep = self.config.train.keep_checkpoints
            old = sorted(self.checkpoint_dir().glob("step_*.pt"))[:-keep] if keep > 0 else []
            for stale in old:
                stale.unlink(missing_ok=True)
        if self.dist.size > 1:
            dist.barrier()
        return path

    def load_checkpoint(self, path: Path) -> None:
        if not Path(path).is_file():
            raise InputError(f"checkpoint not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise InputError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from exc
        self.load_state_dict(state)

    def export(self) -> None:
        """``final/`` (and ``final_ema/``) as save_pretrained directories, loadable by
        ``moebius.from_pretrained``, each with the scheduler config it was trained for (which
        says what the network predicts)."""
        if not self.dist.is_main:
            return
        from moebius.models.checkpoint import save_pretrained

        save_pretrained(self.student, self.output_dir / "final")
        self.schedule.save(self.output_dir / "final")
        if self.ema is not None:
            current = {k: v.clone() for k, v in self.student.state_dict().items()}
            self.student.load_state_dict(self.ema)
            save_pretrained(self.student, self.output_dir / "final_ema")
            self.schedule.save(self.output_dir / "final_ema")
            self.student.load_state_dict(current)

    # ----------------------------------------------------------------- samples
    def write_samples(self) -> Path | None:
        """Inpaint the fixed validation set with the student (EMA weights when kept) through
        the real pipeline and write ``samples/step_XXXXXXXX.png``: rows of [masked input |
        result | original]."""
        if not self.val_records or not self.dist.is_main:
            return None
        from PIL import Image

        from moebius.pipeline import MoebiusInpaintPipeline
        from moebius.settings import InpaintSettings

        data = InpaintingDataset(
            self.val_records,
            self.config.image_size,
            self._mask_sampler(),
            self.config.seed + 1,
            flip=False,
        )
        items = [data[(i, 0, i)] for i in range(len(self.val_records))]

        def to_pixels(image: torch.Tensor) -> np.ndarray:
            return ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()

        originals = [to_pixels(item["image"]) for item in items]
        holes = [item["mask"][0].numpy() > 0.5 for item in items]
        settings = InpaintSettings.from_mapping(self.config.train.sample_settings)
        current = None
        if self.ema is not None:
            current = {k: v.clone() for k, v in self.student.state_dict().items()}
            self.student.load_state_dict(self.ema)
        self.student.eval()
        try:
            pipe = MoebiusInpaintPipeline(
                self.student,
                self.vae,
                self.schedule,
                masked_image_fill=self.config.data.masked_image_fill,
            )
            pipe.set_progress_bar_config(disable=True)
            results = pipe(
                [Image.fromarray(o) for o in originals],
                [Image.fromarray(h.astype(np.uint8) * 255) for h in holes],
                settings=settings,
                output_type="np",
            ).images
        finally:
            self.student.train()
            self.vae.eval()
            if current is not None:
                self.student.load_state_dict(current)
        rows = [
            np.concatenate([np.where(hole[..., None], 127, original), result, original], axis=1)
            for original, hole, result in zip(originals, holes, results, strict=True)
        ]
        grid = np.ascontiguousarray(np.concatenate(rows, axis=0))
        path = self.output_dir / "samples" / f"step_{self.step:08d}.png"
        atomic_write(path, lambda tmp: Image.fromarray(grid).save(tmp, format="PNG"))
        return path


class _MetricsLogger:
    """``metrics.csv`` always; TensorBoard too when installed and enabled."""

    def __init__(self, output_dir: Path, enabled: bool, tensorboard: bool):
        self.enabled, self.writer, self.file = enabled, None, None
        if not enabled:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        path = output_dir / "metrics.csv"
        fresh = not path.exists()
        self.file = path.open("a", newline="")
        self.csv = csv.DictWriter(self.file, ["step", *METRICS, "seconds"], extrasaction="ignore")
        if fresh:
            self.csv.writeheader()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(output_dir / "tensorboard"))
            except ImportError:
                self.writer = None

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.csv.writerow(values)
        self.file.flush()
        if self.writer is not None:
            for k, v in values.items():
                if k != "step":
                    self.writer.add_scalar(f"train/{k}", v, step)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.writer is not None:
            self.writer.close()


def distill(
    config: TrainConfig | str | os.PathLike, resume: bool | str | None = None, **objects
) -> dict[str, float]:
    """Python entry point: ``distill("train.yaml")`` or ``distill(config, student=..., ...)``."""
    if not isinstance(config, TrainConfig):
        config = TrainConfig.from_yaml(config)
    return Distiller(config, resume=resume, **objects).train()
