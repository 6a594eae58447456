"""The inpainting settings: one definition of every knob, its default, its bounds and its help.

The pipeline's ``__call__``, the ``moebius inpaint`` / ``moebius eval`` options, the REST
service's request schema and the resume checks of batch runs are all derived from
:class:`InpaintSettings`, so a default or a limit is written exactly once, here.
"""

import argparse
import hashlib
import math
import secrets
import typing
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from enum import Enum
from typing import Any

from moebius.errors import InputError


class Category(str, Enum):
    """What fills the hole. Each is a block of ten learned LCG tokens: ids 0–9 are
    background (scene: object removal), ids 10–19 foreground (an object)."""

    BACKGROUND = "background"
    FOREGROUND = "foreground"

    @property
    def token_ids(self) -> tuple[int, ...]:
        return tuple(range(0, 10)) if self is Category.BACKGROUND else tuple(range(10, 20))

    @property
    def other(self) -> "Category":
        """The classifier-free guidance's unconditional branch is the other category."""
        return Category.FOREGROUND if self is Category.BACKGROUND else Category.BACKGROUND


class Strategy(str, Enum):
    """Which pixels the model sees."""

    AUTO = "auto"
    RESIZE = "resize"
    CROP = "crop"
    ORIGINAL = "original"


class PasteMode(str, Enum):
    """How the model's output goes back into the photo."""

    BLEND = "blend"
    COMPENSATE = "compensate"
    NONE = "none"


class Prefill(str, Enum):
    """What the hole holds when the photo is encoded for the sampler's start."""

    NONE = "none"
    TELEA = "telea"
    NS = "ns"


def parse_masked_image_fill(value: "Prefill | str", error: type[Exception] = InputError) -> Prefill:
    """What a trained model's masked image holds in the hole (``none``, ``telea`` or ``ns``: see
    :attr:`moebius.pipeline.InpaintPipeline.masked_image_fill`); anything else raises ``error``
    in one line."""
    try:
        return Prefill(value)
    except ValueError:
        raise error(
            f"masked_image_fill must be one of {_choices(Prefill)}, got {value!r}"
        ) from None


class SchedulerKind(str, Enum):
    DDIM = "ddim"
    DPM_SOLVER = "dpm++"


MAX_SEED = 2**63 - 1
# std of the per-channel constant added to the noise, in training and in sampling
NOISE_OFFSET = 0.0357


def item_seed(seed: int, name: str) -> int:
    """A seed for one item of a run, from the run's seed and the item's name: the same item
    gets the same noise whichever process, batch or order it runs in, and different items get
    independent noise."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & MAX_SEED


def _setting(default: Any, help: str, low: float | None = None, high: float | None = None):
    return field(default=default, metadata={"help": help, "low": low, "high": high})


@dataclass(frozen=True)
class InpaintSettings:
    """Everything that decides an inpainting result besides the photo, the mask and the model.

    Build one with keywords (``InpaintSettings(steps=30)``), from strings
    (:meth:`from_mapping`, for forms and saved runs) or from parsed command-line options
    (:func:`settings_from_args`); :meth:`validate` checks it with one-line errors.
    """

    steps: int = _setting(
        20, "denoising steps of the schedule; int(steps x strength) of them run", 1, 1000
    )
    guidance: float = _setting(
        2.5,
        "classifier-free guidance scale between the two LCG categories; 1 runs one branch only "
        "(half the work)",
        0.0,
        50.0,
    )
    strength: float = _setting(
        0.99,
        "how far into the noise the sampler starts, in (0, 1]; below 1 it starts from the "
        "photo's own latent noised to that level",
        0.0,
        1.0,
    )
    prefill: Prefill = _setting(
        Prefill.NONE,
        "fill the hole with OpenCV's Telea or Navier-Stokes method before the photo is encoded; "
        "below strength 1 the sampler then starts from that fill, noised, so the model refines "
        "it instead of painting from noise; none: the hole's own pixels",
    )
    residual_decode: bool = _setting(
        False,
        "below strength 1: decode only what the denoiser changed and add it to the (prefilled) "
        "photo, so the VAE's own reconstruction error cancels; for a small VAE that shifts "
        "colours, such as the bundled demo's; one decode more. At strength 1 (a start from "
        "pure noise, nothing of the photo to keep) it does nothing",
    )
    noise_offset: float = _setting(
        NOISE_OFFSET,
        "std of a per-channel constant added to the starting noise, as the model was trained",
        0.0,
        1.0,
    )
    seed: int | None = _setting(
        0,
        "random seed: the same seed gives the same image; 'random' (or empty) draws a fresh "
        "one, which is reported",
        0,
        MAX_SEED,
    )
    category: Category = _setting(
        Category.BACKGROUND,
        "background fills the hole with scene (object removal); foreground with an object",
    )
    scheduler: SchedulerKind = _setting(
        SchedulerKind.DDIM, "sampler: DDIM (the model's own) or DPM-Solver++ (2nd order)"
    )
    strategy: Strategy = _setting(
        Strategy.AUTO,
        "resize: short side to the model size; crop: inpaint a padded box around the mask and "
        "paste it back; original: the photo's own resolution; auto: crop for photos over 1.5x "
        "the model size, else resize",
    )
    image_size: int | None = _setting(
        None, "working size in pixels, a multiple of 64 (default: the model's, 512)", 64, 4096
    )
    crop_padding: int = _setting(64, "crop: context pixels around the mask", 0, 4096)
    dilation: int = _setting(
        0,
        "grow the hole with a K x K square before inpainting, so edges, halos and shadows are "
        "regenerated too; K counts pixels of the working image (short side = the working size, "
        "512 for the official model), i.e. about K/2 working pixels on every side; 0 = off",
        0,
        255,
    )
    paste: PasteMode = _setting(
        PasteMode.BLEND,
        "blend: the output replaces the hole with a radius-3 Gaussian-feathered edge; compensate: "
        "the same after shifting the fill's mean colour to match a ring around the hole; none: "
        "the model's output everywhere",
    )
    resize_mask: bool = _setting(False, "resize a mask whose size differs from the image")

    def __post_init__(self):
        # Python callers may name a choice by its string ("foreground"); store the enum
        for spec in fields(self):
            kind, value = _kind(spec), getattr(self, spec.name)
            if issubclass(kind, Enum) and isinstance(value, str) and not isinstance(value, kind):
                object.__setattr__(self, spec.name, _parse(spec, value))

    # ------------------------------------------------------------------ checking
    def validate(self) -> "InpaintSettings":
        """Raise a one-line :class:`~moebius.errors.InputError` for anything out of range;
        returns ``self`` so calls chain."""
        for spec in fields(self):
            value = getattr(self, spec.name)
            if value is None and _nullable(spec):
                continue
            kind = _kind(spec)
            if issubclass(kind, Enum):
                if not isinstance(value, kind):
                    raise InputError(f"{spec.name} must be one of {_choices(kind)}, got {value!r}")
                continue
            if kind is bool:
                if not isinstance(value, bool):
                    raise InputError(f"{spec.name} must be true or false, got {value!r}")
                continue
            _check_number(spec, value, kind)
        if not 0 < self.strength <= 1:
            raise InputError(f"strength must be in (0, 1], got {self.strength}")
        if int(self.steps * self.strength) < 1:
            raise InputError(
                f"{self.steps} steps at strength {self.strength} run no denoising step "
                f"(int(steps x strength) = 0); use more steps or strength 1"
            )
        if self.image_size is not None and self.image_size % 64:
            raise InputError(f"image_size must be a multiple of 64, got {self.image_size}")
        return self

    @property
    def denoising_steps(self) -> int:
        """How many model evaluations per image (twice that with guidance ≠ 1)."""
        return min(int(self.steps * self.strength), self.steps)

    def with_seed(self) -> "InpaintSettings":
        """Itself, or with a fresh random seed in place of ``None`` (so it can be reported)."""
        return self if self.seed is not None else replace(self, seed=secrets.randbelow(2**32))

    # ------------------------------------------------------------------ conversion
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: enums as their values."""
        return {k: (v.value if isinstance(v, Enum) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], base: "InpaintSettings | None" = None):
        """Settings from strings or JSON values (a web form, a saved ``run.json``): unknown
        names, unparsable values and out-of-range values are one-line InputErrors."""
        known = {spec.name: spec for spec in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise InputError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(known)}")
        parsed = {name: _parse(known[name], value) for name, value in values.items()}
        return replace(base or cls(), **parsed).validate()

    @classmethod
    def describe(cls) -> list[dict[str, Any]]:
        """Name, type, default, bounds, choices and help of every setting (for API schemas
        and user interfaces)."""
        rows = []
        for spec in fields(cls):
            kind = _kind(spec)
            default = spec.default if spec.default is not MISSING else None
            row = {
                "name": spec.name,
                "type": kind.__name__ if not issubclass(kind, Enum) else "choice",
                "default": default.value if isinstance(default, Enum) else default,
                "help": spec.metadata["help"],
                "nullable": _nullable(spec),
            }
            if issubclass(kind, Enum):
                row["choices"] = [member.value for member in kind]
            for bound in ("low", "high"):
                if spec.metadata.get(bound) is not None:
                    row[bound] = spec.metadata[bound]
            rows.append(row)
        return rows


def _kind(spec) -> type:
    """The field's value type, ``int`` for ``int | None``."""
    return next((a for a in typing.get_args(spec.type) if a is not type(None)), spec.type)


def _nullable(spec) -> bool:
    return type(None) in typing.get_args(spec.type)


def _choices(kind: type[Enum]) -> str:
    return ", ".join(member.value for member in kind)


def _check_number(spec, value: Any, kind: type) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{spec.name} must be a number, got {value!r}")
    if kind is int and not float(value).is_integer():
        raise InputError(f"{spec.name} must be a whole number, got {value!r}")
    if not math.isfinite(value):
        raise InputError(f"{spec.name} must be a finite number, got {value}")
    low, high = spec.metadata["low"], spec.metadata["high"]
    if (low is not None and value < low) or (high is not None and value > high):
        raise InputError(f"{spec.name} must be in [{low:g}, {high:g}], got {value}")


def _parse(spec, value: Any) -> Any:
    """One value from a string or JSON into the field's type (range checks come later)."""
    kind = _kind(spec)
    if _nullable(spec) and (value is None or str(value).strip().lower() in ("", "random")):
        return None
    if issubclass(kind, Enum):
        try:
            return kind(value.value if isinstance(value, Enum) else str(value).strip().lower())
        except ValueError:
            raise InputError(
                f"{spec.name} must be one of {_choices(kind)}, got {value!r}"
            ) from None
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise InputError(f"{spec.name} must be true or false, got {value!r}")
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise InputError(f"{spec.name} must be a number, got {value!r}") from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = value
    else:
        raise InputError(f"{spec.name} must be a number, got {value!r}")
    if kind is int:
        if not math.isfinite(number) or not float(number).is_integer():
            raise InputError(f"{spec.name} must be a whole number, got {value!r}")
        return int(number)
    return float(number)


# ---------------------------------------------------------------------- command line
def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def as_options(values: Mapping[str, Any]) -> str:
    """Settings as the command-line options that give them (``--strength 0.25 --no-resize-mask``),
    spelt as :func:`add_settings_args` defines them: for documentation."""
    options = []
    for name, value in values.items():
        flag, value = _flag(name), value.value if isinstance(value, Enum) else value
        if isinstance(value, bool):
            options.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, float):
            options.append(f"{flag} {value:g}")
        else:
            options.append(f"{flag} {value}")
    return " ".join(options)


MODEL_DEFAULTS_NOTE = (
    "Defaults below are the official model's; a model directory may carry its own in "
    "pipeline.json (the bundled moebius-demo does). An option given here always wins."
)


def add_settings_args(
    parser: argparse.ArgumentParser,
    names: Iterable[str] | None = None,
    note: str = MODEL_DEFAULTS_NOTE,
) -> None:
    """One option per setting (``--steps``, ``--guidance``, …), with the type, choices, default
    and help written above. ``names`` picks a subset, in the given order; ``note`` says whose
    defaults apply. Options not given stay out of the parsed namespace, so that
    :func:`settings_from_args` can put them over a model's own defaults."""
    specs = {spec.name: spec for spec in fields(InpaintSettings)}
    group = parser.add_argument_group("inpainting settings", note)
    for name in names if names is not None else specs:
        spec = specs[name]
        kind = _kind(spec)
        default = spec.default
        shown = default.value if isinstance(default, Enum) else default
        text = spec.metadata["help"] + (f" (default: {shown})" if shown is not None else "")
        text = text.replace("%", "%%")
        if kind is bool:
            # --name / --no-name: a model's own default may be either
            group.add_argument(
                _flag(name),
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=text,
            )
        elif issubclass(kind, Enum):
            group.add_argument(
                _flag(name),
                dest=name,
                default=argparse.SUPPRESS,
                choices=[m.value for m in kind],
                help=text,
            )
        else:
            group.add_argument(
                _flag(name), dest=name, default=argparse.SUPPRESS, type=str, help=text
            )


def settings_from_args(
    args: argparse.Namespace, base: InpaintSettings | None = None
) -> InpaintSettings:
    """The settings the options of :func:`add_settings_args` describe, validated: the options
    given on the command line over ``base`` (a model's own defaults; default: the official
    model's)."""
    given = {
        spec.name: getattr(args, spec.name)
        for spec in fields(InpaintSettings)
        if hasattr(args, spec.name)
    }
    return InpaintSettings.from_mapping(given, base)
