"""The models a server offers: one diffusion model, loaded in the background so the server
answers (``/healthz``, ``/readyz`` = 503) while it loads, and the OpenCV fills, always ready."""

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from moebius.baselines import BASELINES, SETTINGS_USED, baseline_pipeline, is_baseline
from moebius.serve.errors import ApiError
from moebius.settings import InpaintSettings

log = logging.getLogger("moebius.serve")

DIFFUSION_LANE = "diffusion"
INSTANT_LANE = "instant"
ALL_SETTINGS = tuple(row["name"] for row in InpaintSettings.describe())
# how long a client should wait before asking again while the model loads (seconds)
LOADING_RETRY_AFTER = 5

# (name, pipeline): what a loader returns
Loaded = tuple[str, Any]


@dataclass
class ServedModel:
    name: str
    kind: str  # "diffusion" or "classical"
    description: str
    pipeline: Any = None
    state: str = "loading"  # loading, ready or failed
    error: str | None = None
    settings: tuple[str, ...] = ALL_SETTINGS  # the settings that change its result
    default: bool = False

    @property
    def lane(self) -> str:
        return INSTANT_LANE if self.kind == "classical" else DIFFUSION_LANE

    @property
    def image_size(self) -> int | None:
        return self.pipeline.image_size if self.pipeline is not None else None


def _baseline(name: str, default: bool = False) -> ServedModel:
    method = {"telea": "Telea (fast marching)", "ns": "Navier-Stokes"}[BASELINES[name]]
    return ServedModel(
        name,
        "classical",
        f"OpenCV's {method} fill: instant, no weights; a baseline and a quick preview",
        baseline_pipeline(name),
        "ready",
        settings=SETTINGS_USED,
        default=default,
    )


@dataclass
class ModelSet:
    """The served models. ``load`` runs on a background thread at :meth:`start` and returns
    (name, pipeline); ``requested`` names the model until it has loaded (e.g. ``auto``)."""

    requested: str
    load: Callable[[], Loaded]
    on_failure: Callable[[BaseException], None] | None = None
    models: list[ServedModel] = field(default_factory=list)

    def __post_init__(self):
        if is_baseline(self.requested):
            self.models = [_baseline(self.requested, default=True)]
        else:
            self.models = [
                ServedModel(
                    self.requested, "diffusion", "Moebius diffusion inpainting", default=True
                )
            ]
        self.models += [_baseline(name) for name in BASELINES if name != self.requested]
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @classmethod
    def ready_with(cls, name: str, pipeline) -> "ModelSet":
        """Serve an already loaded pipeline (tests, Python callers)."""
        return cls(name, lambda: (name, pipeline))

    @property
    def default(self) -> ServedModel:
        return self.models[0]

    @property
    def ready(self) -> bool:
        return all(model.state == "ready" for model in self.models)

    def start(self) -> None:
        if self.default.state == "ready":
            return
        self._thread = threading.Thread(target=self._load, name="moebius-load", daemon=True)
        self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for loading to end; True if every model is ready."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.ready

    def _load(self) -> None:
        model = self.default
        try:
            name, pipeline = self.load()
        except BaseException as exc:
            with self._lock:
                model.state, model.error = "failed", " ".join(str(exc).split())
            if self.on_failure is not None:
                self.on_failure(exc)
            else:
                log.error("cannot load %s: %s", model.name, model.error)
            return
        with self._lock:
            model.name, model.pipeline, model.state = name, pipeline, "ready"
        log.info("model %s ready", name)

    def get(self, name: str | None) -> ServedModel:
        """The model a request names (None: the default), ready, else an :class:`ApiError`."""
        with self._lock:
            model = (
                self.default if not name else next((m for m in self.models if m.name == name), None)
            )
        if model is None:
            known = ", ".join(m.name for m in self.models)
            raise ApiError(422, "unknown_model", f"unknown model {name!r}; this server has {known}")
        if model.state == "loading":
            raise ApiError(
                503,
                "not_ready",
                f"{model.name} is still loading; retry shortly",
                {"Retry-After": str(LOADING_RETRY_AFTER)},
            )
        if model.state == "failed":
            raise ApiError(503, "not_ready", f"{model.name} failed to load: {model.error}")
        return model
