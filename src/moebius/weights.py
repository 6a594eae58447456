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
"""

import os
from dataclasses import dataclass
from pathlib import Path

from moebius.errors import CheckpointError

PIPELINE_FILE = "pipeline.json"
AUTHORS_WEIGHTS = "diffusion_pytorch_model.bin"
VARIANTS = ("pretrained", "ft_places2", "ft_celebahq", "ft_ffhq")
DEFAULT_VARIANT = "ft_places2"
DEFAULT_REPO = "hustvl/Moebius"
VAE_REPO = "hustvl/PixelHacker"
# folder name in the authors' layout / repo name → our model preset
FAMILY_PRESETS = {"moebius": "moebius-0.2b", "pixelhacker": "pixelhacker"}
BUNDLED = {"moebius-demo": Path(__file__).resolve().parent / "assets" / "moebius-demo"}
DEMO_NOTE = (
    "the official weights are not in the Hugging Face cache, so the bundled moebius-demo model "
    "is used (2.3M parameters trained on 8 photos on a CPU: a demonstration, far below the "
    "paper's quality); pass --model hustvl/Moebius to download the real weights"
)


@dataclass
class WeightsLocation:
    """Where each component lives. ``model_dir`` is our save_pretrained directory; otherwise
    ``model_file`` is an authors' state dict to be loaded with ``model_config``."""

    vae_dir: Path
    model_dir: Path | None = None
    model_file: Path | None = None
    model_config: str | None = None
    scheduler_dir: Path | None = None


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


def _offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "")
    return bool(constants.HF_HUB_OFFLINE) or flag.upper() in ("1", "ON", "YES", "TRUE")


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
    cache_only: bool = False,
) -> WeightsLocation:
    """Download (or find in the Hub cache) ``<repo>/<variant>/diffusion_pytorch_model.bin`` and the VAE."""
    from huggingface_hub import hf_hub_download

    offline = cache_only or _offline()
    wanted = [(repo, f"{variant}/{AUTHORS_WEIGHTS}")]
    wanted += [(VAE_REPO, "vae/config.json"), (VAE_REPO, f"vae/{AUTHORS_WEIGHTS}")]
    paths = []
    for repo_id, filename in wanted:
        try:
            path = hf_hub_download(repo_id, filename, cache_dir=cache_dir, local_files_only=offline)
        except Exception as exc:  # offline, not cached, network down, gated or missing repo
            why = "offline mode (HF_HUB_OFFLINE) and not in the cache" if offline else str(exc)
            raise CheckpointError(
                f"cannot get {repo_id}/{filename} from the Hugging Face Hub ({why.splitlines()[0]}); "
                + _download_help(repo, variant)
            ) from exc
        paths.append(Path(path))
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


def default_model(
    variant: str = DEFAULT_VARIANT, cache_dir: str | os.PathLike | None = None
) -> tuple[str, str | None]:
    """The official weights when already cached, else the bundled demo; never touches the
    network. Returns (name for :func:`locate`, a note for the user or None)."""
    try:
        locate_hub(DEFAULT_REPO, variant, None, cache_dir, cache_only=True)
    except CheckpointError:
        return "moebius-demo", DEMO_NOTE
    return DEFAULT_REPO, None
