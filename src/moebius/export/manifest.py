"""What an export directory holds, read and checked without PyTorch.

``moebius export`` writes ``manifest.json`` last, next to the three graphs (``denoiser``,
``vae_encoder``, ``vae_decoder``; ``.onnx`` files, or OpenVINO IR ``.xml`` + ``.bin``). It
records what a runtime needs to drive them (the noise schedule, the sizes, the VAE scaling
factor), where they came from (the source weights' SHA-256) and how they were made (options,
package versions, the check against PyTorch run at export time).
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moebius.errors import CheckpointError
from moebius.settings import Category

MANIFEST_FILE = "manifest.json"
FORMAT = "moebius-export/1"
GRAPHS = ("denoiser", "vae_encoder", "vae_decoder")
FORMATS = {"onnx": (".onnx",), "openvino": (".xml", ".bin")}  # export format → file suffixes
# The denoiser graph's ``category`` input: index → category.
CATEGORIES = (Category.BACKGROUND, Category.FOREGROUND)
# Entries a runtime reads, beyond the graphs.
REQUIRED = (
    ("export", "format"),
    ("sizes", "image_size"),
    ("sizes", "pixel_multiple"),
    ("sizes", "vae_scale_factor"),
    ("vae", "scaling_factor"),
    ("vae", "latent_channels"),
    ("scheduler", "num_train_timesteps"),
)


def category_index(category: Category | str) -> int:
    return CATEGORIES.index(Category(category))


@dataclass(frozen=True)
class ExportManifest:
    """The parsed ``manifest.json`` of ``directory``."""

    directory: Path
    document: dict[str, Any]

    @property
    def format(self) -> str:
        """``onnx`` or ``openvino``."""
        return self.document["export"]["format"]

    def graph_file(self, graph: str) -> Path:
        return self.directory / self.document["graphs"][graph]["file"]

    @property
    def image_size(self) -> int:
        return self.document["sizes"]["image_size"]

    @property
    def pixel_multiple(self) -> int:
        return self.document["sizes"]["pixel_multiple"]

    @property
    def vae_scale_factor(self) -> int:
        return self.document["sizes"]["vae_scale_factor"]

    @property
    def scaling_factor(self) -> float:
        return self.document["vae"]["scaling_factor"]

    @property
    def latent_channels(self) -> int:
        return self.document["vae"]["latent_channels"]

    @property
    def scheduler(self) -> dict[str, Any]:
        return self.document["scheduler"]

    @property
    def settings(self) -> dict[str, Any]:
        """The exported model's inpainting defaults (none recorded: the official model's)."""
        return self.document.get("settings", {})

    @property
    def masked_image_fill(self) -> str:
        """What the exported model's masked image holds in the hole (``none``: zero)."""
        return self.document.get("masked_image_fill", "none")

    @property
    def options(self) -> dict[str, Any]:
        return self.document["export"]


def graph_bytes(main_file: Path, fmt: str) -> dict[str, int]:
    """The sizes of one graph's files (``.onnx``, or ``.xml`` and ``.bin``), suffix → bytes:
    what a manifest records and :func:`read_manifest` checks."""
    return {suffix: main_file.with_suffix(suffix).stat().st_size for suffix in FORMATS[fmt]}


def read_manifest(directory: str | Path) -> ExportManifest:
    """The manifest of an export directory, checked: format, graph files present and of the
    recorded sizes (a half-copied or mixed-up directory fails here, in one line)."""
    directory = Path(directory).expanduser()
    path = directory / MANIFEST_FILE
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a directory made by `moebius export`")
    if not path.is_file():
        raise CheckpointError(
            f"{directory} is not an exported model: it has no {MANIFEST_FILE} (make one with "
            "`moebius export onnx|openvino --model ... OUT_DIR`)"
        )
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        found = document.get("format") if isinstance(document, dict) else None
        raise CheckpointError(f"{path} is not a {FORMAT} manifest (format: {found!r})")
    missing = [".".join(keys) for keys in REQUIRED if not _has(document, keys)]
    missing += [
        f"graphs.{graph}.{key}"
        for graph in GRAPHS
        for key in ("file", "bytes")
        if not _has(document, ("graphs", graph, key))
    ]
    if missing:
        raise CheckpointError(f"{path} lacks what the runtime needs: {', '.join(missing)}")
    manifest = ExportManifest(directory, document)
    if manifest.format not in FORMATS:
        raise CheckpointError(f"{path}: unknown export format {manifest.format!r}")
    for graph in GRAPHS:
        for suffix in FORMATS[manifest.format]:
            file = manifest.graph_file(graph).with_suffix(suffix)
            recorded = document["graphs"][graph]["bytes"].get(suffix)
            if not file.is_file():
                raise CheckpointError(f"{directory} is incomplete: {file.name} is missing")
            if file.stat().st_size != recorded:
                raise CheckpointError(
                    f"{directory} does not match its {MANIFEST_FILE}: {file.name} has "
                    f"{file.stat().st_size} bytes, the export wrote {recorded}"
                )
    return manifest


def _has(document: Any, keys: tuple[str, ...]) -> bool:
    for key in keys:
        if not isinstance(document, dict) or key not in document:
            return False
        document = document[key]
    return True
