"""Finding a model + VAE on disk or on the Hugging Face Hub.

Three layouts are understood:

* ours, written by :meth:`MoebiusInpaintPipeline.save_pretrained`:
  ``<dir>/pipeline.json``, ``<dir>/model/`` (config.json + model.safetensors),
  ``<dir>/vae/`` and ``<dir>/scheduler/`` (diffusers);
* the authors' local layout: ``<root>/Moebius/<variant>/diffusion_pytorch_model.bin``
  (or ``PixelHacker/<variant>/``, or ``<variant>/`` directly) next to ``<root>/vae/``;
* a Hub repo id (``hustvl/Moebius``, ``hustvl/PixelHacker``): ``<variant>/diffusion_pytorch_model.bin``;
  the VAE is only published in ``hustvl/PixelHacker`` under ``vae/``.

``moebius-demo`` names the small model that ships inside the package (made by
``moebius reproduce small``), so that inpainting works offline on a fresh install.

:func:`offline_switch` is the one rule for "no downloads" in the package: the Hub weights
here and the metric networks' weights (:mod:`moebius.eval.weights`) both follow it.
"""

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from moebius.errors import CheckpointError, InputError
from moebius.settings import Prefill, parse_masked_image_fill

PIPELINE_FILE = "pipeline.json"
AUTHORS_WEIGHTS = "diffusion_pytorch_model.bin"
VARIANTS = ("pretrained", "ft_places2", "ft_celebahq", "ft_ffhq")
DEFAULT_VARIANT = "ft_places2"
DEFAULT_REPO = "hustvl/Moebius"
VAE_REPO = "hustvl/PixelHacker"
# folder name in the authors' layout / repo name → our model preset
FAMILY_PRESETS = {"moebius": "moebius-0.2b", "pixelhacker": "pixelhacker"}
DEMO = "moebius-demo"
BUNDLED = {DEMO: Path(__file__).resolve().parent / "assets" / DEMO}
# huggingface_hub reads HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE); MOEBIUS_OFFLINE is ours alone.
OFFLINE_SWITCHES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "MOEBIUS_OFFLINE")


@dataclass
class WeightsLocation:
    """Where each component lives. ``model_dir`` is our save_pretrained directory; otherwise
    ``model_file`` is an authors' state dict to be loaded with ``model_config``."""

    vae_dir: Path
    model_dir: Path | None = None
    model_file: Path | None = None
    model_config: str | None = None
    scheduler_dir: Path | None = None
    settings: dict = field(default_factory=dict)  # the model's own inpainting defaults
    masked_image_fill: Prefill = Prefill.NONE  # what the trained model's masked image holds


def _preset_for(name: str, override: str | None) -> str:
    if override is not None:
        return override
    return FAMILY_PRESETS.get(name.lower(), FAMILY_PRESETS["moebius"])


def _is_vae_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def locate_local(root: Path, variant: str, model_config: str | None) -> WeightsLocation:
    """Resolve a local directory in any of the layouts above."""
    if (root / PIPELINE_FILE).is_file():
        scheduler = root / "scheduler"
        return WeightsLocation(
            vae_dir=root / "vae",
            model_dir=root / "model",
            scheduler_dir=scheduler if scheduler.is_dir() else None,
            **_manifest_fields(root / PIPELINE_FILE),
        )
    candidates = [
        (root / family / variant / AUTHORS_WEIGHTS, family, root / "vae")
        for family in ("Moebius", "PixelHacker")
    ]
    candidates.append((root / variant / AUTHORS_WEIGHTS, root.name, root / "vae"))
    # pointing at <root>/Moebius itself: the VAE sits one level up
    candidates.append((root / variant / AUTHORS_WEIGHTS, root.name, root.parent / "vae"))
    for weights, family, vae_dir in candidates:
        if weights.is_file() and _is_vae_dir(vae_dir):
            return WeightsLocation(
                vae_dir=vae_dir, model_file=weights, model_config=_preset_for(family, model_config)
            )
    raise CheckpointError(
        f"{root} is not a model directory: expected {PIPELINE_FILE} (a saved pipeline) or the "
        f"authors' layout {root}/Moebius/{variant}/{AUTHORS_WEIGHTS} + {root}/vae/config.json "
        f"+ {root}/vae/{AUTHORS_WEIGHTS}"
    )


def _manifest_fields(manifest: Path) -> dict:
    """``settings`` and ``masked_image_fill`` of a saved pipeline's ``pipeline.json``."""
    try:
        document = json.loads(manifest.read_text())
        settings = document.get("settings", {})
        fill = document.get("masked_image_fill", "none")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"cannot read {manifest}: {exc}") from None
    if not isinstance(settings, dict):
        raise CheckpointError(f'{manifest}: "settings" must be an object of setting values')
    try:
        fill = parse_masked_image_fill(fill)
    except InputError as exc:
        raise CheckpointError(f"{manifest}: {exc}") from None
    return {"settings": settings, "masked_image_fill": fill}


def offline_switch() -> str | None:
    """The environment variable that switches downloads off, or None when they are allowed.

    HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as huggingface_hub understands it, and
    MOEBIUS_OFFLINE for this package only; 1, true, yes or on (any case) switch off. Read on
    every call, as huggingface_hub itself only reads them once, at import.
    """
    for name in OFFLINE_SWITCHES:
        if os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return name
    from huggingface_hub import constants

    return "HF_HUB_OFFLINE" if constants.HF_HUB_OFFLINE else None


def _hub_errors() -> tuple[type[Exception], ...]:
    """What a failed Hub request raises: huggingface_hub's HTTP errors derive from the base error
    of the HTTP library it uses (requests, httpx or httpx2, by version), which that library's
    connection and timeout errors share; requests' errors and the Hub's cache misses are
    OSErrors; a name that cannot be a repo id is an HFValidationError."""
    from huggingface_hub.utils import HfHubHTTPError, HFValidationError

    return (OSError, HFValidationError, *HfHubHTTPError.__bases__)


def _one_line(exc: BaseException) -> str:
    # huggingface_hub's HTTP errors say the status on their first line and what was not
    # found on the next.
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines[:2]) or type(exc).__name__


def _official_files(repo: str, variant: str) -> list[tuple[str, str]]:
    """(repo id, file) for the model weights and the VAE, which only PixelHacker's repo holds."""
    return [
        (repo, f"{variant}/{AUTHORS_WEIGHTS}"),
        (VAE_REPO, "vae/config.json"),
        (VAE_REPO, f"vae/{AUTHORS_WEIGHTS}"),
    ]


def _cached(repo_id: str, filename: str, cache_dir: str | os.PathLike | None) -> Path | None:
    """The file's path in the Hub cache, without any network request."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
    return Path(path) if isinstance(path, str) else None


def _download_help(repo: str, variant: str) -> str:
    family = repo.split("/")[-1]
    return (
        f"download them once while online with `hf download {repo} {variant}/{AUTHORS_WEIGHTS} "
        f"--local-dir weights/{family}` and `hf download {VAE_REPO} vae/config.json "
        f"vae/{AUTHORS_WEIGHTS} --local-dir weights`, then pass --model weights "
        f"(Python: MoebiusInpaintPipeline.from_pretrained('weights'))"
    )


def locate_hub(
    repo: str,
    variant: str,
    model_config: str | None,
    cache_dir: str | os.PathLike | None = None,
) -> WeightsLocation:
    """``<repo>/<variant>/diffusion_pytorch_model.bin`` and the VAE: downloaded (or checked
    against the Hub and taken from its cache), or only from the cache when offline."""
    from huggingface_hub import hf_hub_download

    switch = offline_switch()
    paths = []
    for repo_id, filename in _official_files(repo, variant):
        if switch:
            path = _cached(repo_id, filename, cache_dir)
            if path is None:
                raise CheckpointError(
                    f"cannot get {repo_id}/{filename}: {switch} is set and it is not in the "
                    f"Hugging Face cache; " + _download_help(repo, variant)
                )
        else:
            try:
                path = Path(hf_hub_download(repo_id, filename, cache_dir=cache_dir))
            except _hub_errors() as exc:
                raise CheckpointError(
                    f"cannot get {repo_id}/{filename} from the Hugging Face Hub "
                    f"({_one_line(exc)}); " + _download_help(repo, variant)
                ) from exc
        paths.append(path)
    return WeightsLocation(
        vae_dir=paths[1].parent,
        model_file=paths[0],
        model_config=_preset_for(repo.split("/")[-1], model_config),
    )


def locate(
    name_or_path: str | os.PathLike,
    variant: str = DEFAULT_VARIANT,
    model_config: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> WeightsLocation:
    """A local directory (any layout) or, if no such path exists, a Hub repo id."""
    if str(name_or_path) in BUNDLED:
        return locate_local(BUNDLED[str(name_or_path)], variant, model_config)
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path} is a file; pass the directory that holds the weights")
        return locate_local(path, variant, model_config)
    name = str(name_or_path)
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        return locate_hub(name, variant, model_config, cache_dir)
    raise CheckpointError(f"model not found: {name} is neither a directory nor a Hub repo id")


def _human_size(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


def stored_parameters(directory: Path) -> int:
    """Parameters in a directory's .safetensors files, counted from their headers alone
    (BatchNorm's running statistics are stored too, but are state, not parameters)."""
    import math

    from safetensors import safe_open

    statistics = ("running_mean", "running_var", "num_batches_tracked")
    count = 0
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), framework="numpy") as stored:
            count += sum(
                math.prod(stored.get_slice(key).get_shape())
                for key in stored.keys()  # noqa: SIM118 (safe_open is not iterable)
                if key.rsplit(".", 1)[-1] not in statistics
            )
    return count


def _demo_note(why: str, advice: str) -> str:
    denoiser = stored_parameters(BUNDLED[DEMO] / "model") / 1e6
    return (
        f"the official weights are not in the Hugging Face cache and {why}, so the bundled "
        f"{DEMO} model is used (a {denoiser:.1f}M-parameter denoiser trained by `moebius "
        f"reproduce small` on a CPU: a demonstration, far below the paper's quality); {advice}"
    )


def _download(files: list[tuple[str, str]], cache_dir: str | os.PathLike | None) -> None:
    """Download ``files`` into the Hub cache, saying first how much (on stderr, where
    huggingface_hub's progress bars follow). The Hub is asked for every size before anything
    is downloaded, so a missing or refused file costs no partial download; each request waits
    at most HF_HUB_ETAG_TIMEOUT seconds (10 by default) for an answer."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url

    sizes = [
        get_hf_file_metadata(
            hf_hub_url(repo_id, filename), timeout=constants.HF_HUB_ETAG_TIMEOUT
        ).size
        for repo_id, filename in files
    ]
    total = "size unknown" if None in sizes else _human_size(sum(sizes))
    names = ", ".join(f"{repo_id}/{filename}" for repo_id, filename in files)
    where = cache_dir or constants.HF_HUB_CACHE
    print(f"moebius: downloading {names} ({total}) into {where}", file=sys.stderr, flush=True)
    for repo_id, filename in files:
        hf_hub_download(repo_id, filename, cache_dir=cache_dir)


def default_model(
    variant: str = DEFAULT_VARIANT, cache_dir: str | os.PathLike | None = None
) -> tuple[str, str | None]:
    """The model ``moebius inpaint`` uses without ``--model``, as diffusers and IOPaint users
    expect: the official weights (``hustvl/Moebius`` + the VAE of ``hustvl/PixelHacker``) from
    the Hugging Face cache; else downloaded into it, with their size and a progress bar on
    stderr; else, offline (:func:`offline_switch`) or when the Hub cannot be reached or refuses,
    the bundled demo model. Returns (a name for :func:`locate`, a note saying why the demo is
    used, or None)."""
    missing = [
        (repo_id, filename)
        for repo_id, filename in _official_files(DEFAULT_REPO, variant)
        if _cached(repo_id, filename, cache_dir) is None
    ]
    if not missing:
        return DEFAULT_REPO, None
    switch = offline_switch()
    if switch:
        return DEMO, _demo_note(f"{switch} is set", f"unset {switch} once to download them")
    try:
        _download(missing, cache_dir)
    except _hub_errors() as exc:
        return DEMO, _demo_note(
            f"they could not be downloaded from the Hugging Face Hub ({_one_line(exc)})",
            "run again online to download them, or see the README for an offline copy",
        )
    return DEFAULT_REPO, None
