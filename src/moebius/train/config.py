"""The training YAML as nested dataclasses. Unknown keys are errors (typos must not be silent).

See ``examples/train_moebius_512.yaml`` for the authors' 512 px run and docs/training.md.
"""

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from moebius.errors import ConfigError
from moebius.settings import NOISE_OFFSET


@dataclass
class MaskConfig:
    kind: str = "lama"  # "lama" | "mat"
    weight: float = 1.0
    config: str = "medium-512"  # LaMa preset ("thin-512", …) or a LaMa-format YAML path
    hole_range: list[float] = field(default_factory=lambda: [0.0, 1.0])  # MAT only


@dataclass
class DataConfig:
    train: str | None = None  # authors' JSONL or an image folder
    val: str | None = None  # same formats; default: the first training records
    cache: str | None = None  # latent cache directory (moebius cache-latents); None = encode live
    prompt: str = "background"  # category for image-folder records
    flip: bool = True
    # multi-scale crops: scale each image so its short side is a random length in this
    # range (pixels) before cropping; None = only upscale images smaller than the crop
    short_side: list[int] | None = None
    # image folders carry one category; label this fraction of samples "foreground" so the
    # branch CFG extrapolates away from is trained too
    foreground_prob: float = 0.0
    # what the masked image holds in the hole: zero (none, the authors') or OpenCV's fill
    # (telea / ns); the pipeline the model is saved with conditions on the same
    masked_image_fill: str = "none"
    num_workers: int = 2
    dataset_mask_prob: float = 1.0  # use a record's own mask with this probability
    dilate: list[int] | None = field(default_factory=lambda: [3, 7])  # random k×k, None = off
    masks: list[MaskConfig] = field(
        default_factory=lambda: [
            MaskConfig("lama", 1.0, "thin-512"),
            MaskConfig("lama", 1.0, "medium-512"),
            MaskConfig("lama", 1.0, "thick-512"),
        ]
    )


@dataclass
class DistillConfig:
    kd: bool = True  # False: the paper's no-KD baseline (task loss only, no teacher)
    student_block: int | None = None  # None: moebius.models.kd_pairs.coarse_kd_blocks
    teacher_block: int | None = None
    perceptual: str = "auto"  # auto | elatentlpips | multiscale | none
    noise_offset: float = NOISE_OFFSET
    timesteps: str = "lognorm"  # lognorm (the authors') | uniform (training from scratch)
    # epsilon (the authors') | v_prediction (small networks trained from scratch); a KD
    # teacher must predict the same; saved with the model as its scheduler config
    prediction_type: str = "epsilon"
    output_param: str = "diff_model.conv_out.conv_pw.weight"
    feature_param: str | None = None  # None: proj_out of the last transformer of the deepest level


@dataclass
class OptimConfig:
    optimizer: str = "muon"  # muon (2-D weights; AdamW for the rest) | adamw
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    muon_momentum: float = 0.95
    muon_adjust_lr: str | None = "match_rms_adamw"  # torch Muon adjust_lr_fn
    warmup_steps: int = 0
    schedule: str = "constant"  # constant | cosine | linear
    min_lr_ratio: float = 0.0
    max_grad_norm: float = 0.0  # 0 = no clipping


@dataclass
class RunConfig:
    batch_size: int = 2  # per process (GPU)
    grad_accum: int = 1
    max_steps: int = 200_000
    mixed_precision: str = "bf16"  # bf16 | no
    # the frozen teacher's forward (distillation only): bf16 | no; None = as mixed_precision.
    # A float32 student can learn from a bfloat16 teacher where bfloat16 is the faster.
    teacher_mixed_precision: str | None = None
    dtype: str = "float32"  # parameters and compute; float64 only for numerical checks
    gradient_checkpointing: bool = True
    sync_bn: bool = False
    ema_decay: float | None = None
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 10
    tensorboard: bool = True
    sample_every: int = 1000  # 0 = never
    num_val_samples: int = 4
    # inpainting settings of the preview images (moebius.settings.InpaintSettings names);
    # anything not given takes the inpainting defaults
    sample_settings: dict = field(default_factory=dict)


@dataclass
class TrainConfig:
    student: Any = "moebius-0.2b"  # preset, YAML/config.json path or dict
    student_checkpoint: str | None = None  # initial weights; None = random
    # random start: "authors" (their initialisation) | "near-identity" (for narrow students
    # trained from scratch: moebius.nn.initialisation.start_near_identity)
    student_init: str = "authors"
    teacher: Any = "pixelhacker"  # preset / config path, or a save_pretrained directory
    teacher_checkpoint: str | None = None
    vae: str | None = None  # diffusers AutoencoderKL directory; None only with a cache
    scaling_factor: float = 0.13025
    image_size: int = 512
    output_dir: str = "runs/distill"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: RunConfig = field(default_factory=RunConfig)

    @classmethod
    def from_dict(cls, document: dict) -> "TrainConfig":
        return _build(cls, document, "")

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "TrainConfig":
        path = Path(path)
        try:
            document = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read training config {path}: {exc}") from exc
        if not isinstance(document, dict):
            raise ConfigError(f"training config {path} does not hold a mapping")
        config = cls.from_dict(document)
        config.resolve_paths(path.parent)
        return config

    def resolve_paths(self, base: Path) -> None:
        """Relative file paths in a YAML are relative to the YAML's folder."""

        def fix(value):
            if isinstance(value, str) and value and not Path(value).is_absolute():
                candidate = base / value
                return str(candidate) if candidate.exists() else value
            return value

        for name in ("student", "student_checkpoint", "teacher", "teacher_checkpoint", "vae"):
            setattr(self, name, fix(getattr(self, name)))
        for name in ("train", "val", "cache"):
            setattr(self.data, name, fix(getattr(self.data, name)))
        for mask in self.data.masks:
            mask.config = fix(mask.config)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def override(self, dotted: str) -> None:
        """Apply one ``section.key=value`` override (value parsed as YAML)."""
        if "=" not in dotted:
            raise ConfigError(f"override {dotted!r} is not key=value")
        key, value = dotted.split("=", 1)
        document = self.to_dict()
        node = document
        *parents, leaf = key.strip().split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"override {key!r}: no section {part!r}")
            node = node[part]
        if leaf not in node:
            raise ConfigError(f"override {key!r}: unknown key {leaf!r}")
        node[leaf] = yaml.safe_load(value)
        self.__dict__.update(TrainConfig.from_dict(document).__dict__)


def _build(cls, document: Any, where: str):
    if not isinstance(document, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(document) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) in {where or 'config'}: {', '.join(unknown)}")
    values = {}
    for name, value in document.items():
        hint = hints[name]
        path = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, path)
        elif name == "masks" and cls is DataConfig:
            if not isinstance(value, list):
                raise ConfigError(f"{path} must be a list")
            values[name] = [_build(MaskConfig, m, f"{path}[{i}]") for i, m in enumerate(value)]
        else:
            values[name] = _coerce(value, hint, path)
    return cls(**values)


def _coerce(value: Any, hint: Any, path: str) -> Any:
    """YAML 1.1 reads ``1e-4`` as a string; numbers are converted where a number is expected."""
    allowed = (
        typing.get_args(hint)
        if typing.get_origin(hint) in (typing.Union, types.UnionType)
        else (hint,)
    )
    if value is None or not isinstance(value, str):
        return value
    for number in (int, float):
        if number in allowed:
            try:
                return number(value)
            except ValueError:
                continue
    if str in allowed or Any in allowed:
        return value
    if int in allowed or float in allowed:
        raise ConfigError(f"{path} must be a number, got {value!r}")
    return value
