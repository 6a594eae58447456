"""The noise schedule, the samplers and the one denoising loop.

Everything that turns noise into a latent goes through :func:`denoise`: the pipeline (with
any backend), the trainer's preview images, the evaluation runner and the benchmark. The
maths works on PyTorch tensors and NumPy arrays alike, so a runtime without PyTorch (ONNX
Runtime, OpenVINO) drives exactly the same sampler.

The schedule is the one Moebius and PixelHacker were trained with: DDPM, 1000 steps,
``scaled_linear`` betas from 0.00085 to 0.012, ε-prediction. Its ᾱ table is computed so that
it equals, bit for bit, the float32 table of the diffusers schedulers the authors sample with;
the DDIM update repeats their float32 operations in the same order, so a trajectory matches
theirs exactly.
"""

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from moebius.errors import ConfigError
from moebius.files import write_json
from moebius.settings import SchedulerKind

SCHEDULER_CONFIG = "scheduler_config.json"
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
PREDICTION_TYPES = ("epsilon", "v_prediction")


def _float32_linspace(start: float, end: float, count: int) -> np.ndarray:
    """PyTorch's float32 ``linspace``: float32 ends and step, each point ``start + i·step``
    (from the start for the first half, ``end − (count−1−i)·step`` for the rest) with one
    rounding. diffusers builds its betas this way."""
    first, last = np.float32(start), np.float32(end)
    step = np.float32((last - first) / np.float32(count - 1))
    index = np.arange(count, dtype=np.float64)
    low = np.float64(first) + np.float64(step) * index
    high = np.float64(last) - np.float64(step) * (count - 1 - index)
    return np.where(index < count // 2, low, high).astype(np.float32)


def _coefficient(values, like, root: bool = False):
    """Schedule values (float32; one per sample, or one for all) in the array type, device and
    dtype of ``like``, shaped to broadcast over its trailing dimensions; ``root`` takes their
    square root first, the way that array library does: PyTorch's float32 power of one half is
    not the correctly rounded square root, and matching the authors' trajectories bit for bit
    needs its values."""
    values = np.asarray(values, dtype=np.float32)
    if isinstance(like, np.ndarray):
        result = np.sqrt(values) if root else values
        return float(result) if result.ndim == 0 else result.reshape(-1, *([1] * (like.ndim - 1)))
    import torch

    result = (
        torch.from_numpy(values.reshape(-1)) ** 0.5
        if root
        else torch.from_numpy(values.reshape(-1))
    )
    if values.ndim == 0:
        return result.item()
    return result.reshape(-1, *([1] * (like.ndim - 1))).to(like.device, like.dtype)


def _timestep_values(t) -> np.ndarray:
    if hasattr(t, "detach"):  # a torch tensor
        t = t.detach().cpu().numpy()
    return np.asarray(t, dtype=np.int64)


@dataclass(frozen=True)
class NoiseSchedule:
    """The training noise schedule and how inference steps are placed on it. Reads and writes
    the diffusers ``scheduler_config.json`` format (``DDIMScheduler``), so saved pipelines stay
    loadable by diffusers too."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    prediction_type: str = "epsilon"
    timestep_spacing: str = "leading"
    steps_offset: int = 0
    set_alpha_to_one: bool = True

    def __post_init__(self):
        if self.beta_schedule not in ("scaled_linear", "linear"):
            raise ConfigError(f"unsupported beta_schedule {self.beta_schedule!r}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ConfigError(
                f"unsupported prediction_type {self.prediction_type!r}"
                f" (one of {', '.join(PREDICTION_TYPES)})"
            )
        if self.timestep_spacing not in TIMESTEP_SPACINGS:
            raise ConfigError(f"unsupported timestep_spacing {self.timestep_spacing!r}")

    @cached_property
    def alphas_cumprod(self) -> np.ndarray:
        """ᾱ_t, float32: betas from a float32 linspace (of √β for ``scaled_linear``), the
        running product accumulated in float64 and rounded once per entry, as PyTorch does."""
        if self.beta_schedule == "scaled_linear":
            roots = _float32_linspace(
                self.beta_start**0.5, self.beta_end**0.5, self.num_train_timesteps
            )
            betas = roots * roots
        else:
            betas = _float32_linspace(self.beta_start, self.beta_end, self.num_train_timesteps)
        alphas = np.float32(1.0) - betas
        return np.cumprod(alphas.astype(np.float64)).astype(np.float32)

    def alpha(self, t: int) -> np.float32:
        """ᾱ_t, with ᾱ = 1 before the first training step (``set_alpha_to_one``)."""
        if t >= 0:
            return self.alphas_cumprod[t]
        return np.float32(1.0) if self.set_alpha_to_one else self.alphas_cumprod[0]

    def add_noise(self, x0, noise, t):
        """x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε, for one timestep or one per sample."""
        a = self.alphas_cumprod[_timestep_values(t)]
        one = np.float32(1)
        return _coefficient(a, x0, root=True) * x0 + _coefficient(one - a, x0, root=True) * noise

    def predict_x0(self, x_t, eps, t):
        """The clean latent implied by a noise prediction: (x_t − √(1−ᾱ_t)·ε) / √ᾱ_t."""
        a = self.alphas_cumprod[_timestep_values(t)]
        one = np.float32(1)
        return (x_t - _coefficient(one - a, eps, root=True) * eps) / _coefficient(a, eps, root=True)

    def epsilon(self, x_t, output, t):
        """The noise implied by a network output of this schedule's ``prediction_type``:
        the output itself for ε-prediction; √ᾱ_t·v + √(1−ᾱ_t)·x_t for v-prediction."""
        if self.prediction_type == "epsilon":
            return output
        a = self.alphas_cumprod[_timestep_values(t)]
        one = np.float32(1)
        return (
            _coefficient(a, output, root=True) * output
            + _coefficient(one - a, x_t, root=True) * x_t
        )

    def target(self, x0, noise, t):
        """What the network is trained to output: ε, or v = √ᾱ_t·ε − √(1−ᾱ_t)·x0. Near pure
        noise v is about −x0, so an error in v moves the implied clean latent by as much;
        an error in ε moves it √((1−ᾱ)/ᾱ) times as much (×14 at t = 950), which a small
        network trained briefly cannot afford."""
        if self.prediction_type == "epsilon":
            return noise
        a = self.alphas_cumprod[_timestep_values(t)]
        one = np.float32(1)
        return _coefficient(a, noise, root=True) * noise - _coefficient(one - a, x0, root=True) * x0

    def timesteps(self, steps: int) -> np.ndarray:
        """``steps`` decreasing training timesteps, placed by ``timestep_spacing``."""
        total = self.num_train_timesteps
        if self.timestep_spacing == "leading":
            values = (np.arange(steps) * (total // steps)).round()[::-1] + self.steps_offset
        elif self.timestep_spacing == "trailing":
            values = np.arange(total, 0, -total / steps).round() - 1
        else:
            values = np.linspace(0, total - 1, steps).round()[::-1]
        return values.astype(np.int64).copy()

    # ------------------------------------------------------------------ config files
    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "NoiseSchedule":
        """From a diffusers scheduler config; keys that do not change ε-prediction sampling
        (``_class_name``, ``clip_sample`` off, …) are ignored."""
        if config.get("clip_sample"):
            raise ConfigError("clip_sample is not supported (the models were trained without it)")
        if config.get("trained_betas") is not None:
            raise ConfigError("trained_betas are not supported")
        names = {spec.name for spec in fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in names})

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "NoiseSchedule":
        path = Path(directory) / SCHEDULER_CONFIG
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the scheduler config {path}: {exc}") from exc
        return cls.from_config(config)

    def to_config(self) -> dict[str, Any]:
        return {"_class_name": "DDIMScheduler", **asdict(self), "clip_sample": False}

    def save(self, directory: str | os.PathLike) -> None:
        write_json(Path(directory) / SCHEDULER_CONFIG, self.to_config())


# ---------------------------------------------------------------------- samplers
class DDIMSampler:
    """Deterministic DDIM (η = 0) over the last ``int(steps·strength)`` of ``steps`` steps."""

    def __init__(self, schedule: NoiseSchedule, steps: int, strength: float = 1.0):
        self.schedule = schedule
        self.stride = schedule.num_train_timesteps // steps
        every = schedule.timesteps(steps)
        self.timesteps = [int(t) for t in every[steps - min(int(steps * strength), steps) :]]

    def step(self, output, index: int, latents):
        t = self.timesteps[index]
        eps = self.schedule.epsilon(latents, output, t)
        a, a_prev = self.schedule.alpha(t), self.schedule.alpha(t - self.stride)
        # the float32 operations of diffusers' DDIMScheduler, in its order
        one = np.float32(1)
        x0 = (latents - _coefficient(one - a, eps, root=True) * eps) / _coefficient(
            a, latents, root=True
        )
        direction = _coefficient(one - a_prev, eps, root=True) * eps
        return _coefficient(a_prev, x0, root=True) * x0 + direction


class DPMSolverSampler:
    """DPM-Solver++ (2M, midpoint): second-order multistep in log-SNR, first order on the
    first step, and a last step that lands on the predicted clean latent (σ = 0). Its steps
    split [0, T−1] evenly into ``steps + 1`` points and drop the last, as diffusers'
    ``DPMSolverMultistepScheduler`` does."""

    def __init__(self, schedule: NoiseSchedule, steps: int, strength: float = 1.0):
        self.schedule = schedule
        total = schedule.num_train_timesteps
        every = np.linspace(0, total - 1, steps + 1).round()[::-1][:-1].astype(np.int64)
        ac = schedule.alphas_cumprod.astype(np.float64)
        sigmas = np.sqrt((1 - ac) / ac)[every]
        start = steps - min(int(steps * strength), steps)
        self.timesteps = [int(t) for t in every[start:]]
        self.sigmas = np.append(sigmas, 0.0)[start:]
        self.previous: tuple[Any, float] | None = None  # (x0 prediction, its log-SNR λ)

    def step(self, output, index: int, latents):
        eps = self.schedule.epsilon(latents, output, self.timesteps[index])
        sigma, sigma_next = self.sigmas[index], self.sigmas[index + 1]
        alpha_s, sigma_s = 1 / math.sqrt(sigma**2 + 1), sigma / math.sqrt(sigma**2 + 1)
        x0 = (latents - sigma_s * eps) / alpha_s
        if sigma_next == 0:
            self.previous = None
            return x0
        alpha_t, sigma_t = (
            1 / math.sqrt(sigma_next**2 + 1),
            sigma_next / math.sqrt(sigma_next**2 + 1),
        )
        lambda_s, lambda_t = math.log(alpha_s / sigma_s), math.log(alpha_t / sigma_t)
        h = lambda_t - lambda_s
        decay = alpha_t * (math.exp(-h) - 1.0)
        update = (sigma_t / sigma_s) * latents - decay * x0
        if self.previous is not None:
            previous_x0, lambda_previous = self.previous
            ratio = (lambda_s - lambda_previous) / h
            update = update - 0.5 * decay * ((1.0 / ratio) * (x0 - previous_x0))
        self.previous = (x0, lambda_s)
        return update


SAMPLERS: dict[SchedulerKind, type] = {
    SchedulerKind.DDIM: DDIMSampler,
    SchedulerKind.DPM_SOLVER: DPMSolverSampler,
}


def make_sampler(
    kind: SchedulerKind | str, schedule: NoiseSchedule, steps: int, strength: float = 1.0
):
    """A fresh sampler for one trajectory (DPM-Solver keeps state between its steps)."""
    return SAMPLERS[SchedulerKind(kind)](schedule, steps, strength)


# ---------------------------------------------------------------------- the loop
class Cancelled(Exception):
    """Raised inside :func:`denoise` when its ``cancelled`` hook says so."""


@dataclass(frozen=True)
class Step:
    """What a step callback is told: ``index`` of ``count`` steps done, at ``timestep``."""

    index: int
    count: int
    timestep: int
    latents: Any


def guided(eps, scale: float):
    """Classifier-free guidance on a stacked (unconditional; conditional) batch:
    ε = ε_u + s·(ε_c − ε_u)."""
    half = eps.shape[0] // 2
    unconditional, conditional = eps[:half], eps[half:]
    return unconditional + scale * (conditional - unconditional)


def initial_latents(schedule: NoiseSchedule, sampler, image_latents, noise, strength: float):
    """Pure noise at strength 1 (``image_latents`` may then be None); below it, the photo's
    latent noised to the first timestep."""
    if strength < 1:
        return schedule.add_noise(image_latents, noise, sampler.timesteps[0])
    return noise


def denoise(
    predict: Callable[[Any, int], Any],
    sampler,
    latents,
    on_step: Callable[[Step], Any] | None = None,
    cancelled: Callable[[], bool] | None = None,
):
    """Run ``sampler`` from ``latents``: ``predict(latents, t)`` gives the (guided) network
    output, of the sampler's schedule's prediction type. ``on_step`` sees every finished step and may return replacement latents;
    ``cancelled`` is asked before each step and stops the loop with :class:`Cancelled`."""
    count = len(sampler.timesteps)
    for index, t in enumerate(sampler.timesteps):
        if cancelled is not None and cancelled():
            raise Cancelled(f"cancelled before step {index + 1} of {count}")
        latents = sampler.step(predict(latents, t), index, latents)
        if on_step is not None:
            replaced = on_step(Step(index, count, t, latents))
            if replaced is not None:
                latents = replaced
    return latents
