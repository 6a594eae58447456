"""Where the metric networks' weights come from.

Each feature extractor needs one public weight file. We look for it, in order, in ``--weights-dir``,
``$MOEBIUS_WEIGHTS_DIR``, the torch hub cache (where pytorch-fid / torchvision downloads land) and,
for the LPIPS heads, an installed ``lpips`` package; when allowed we download it from its public URL
into the first writable of those places. Offline and absent → an ``InputError`` naming the file.
"""

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from moebius.errors import InputError
from moebius.weights import offline_switch


@dataclass(frozen=True)
class WeightAsset:
    filename: str
    url: str
    description: str
    # sha256 prefix as torch hub checks it ("<name>-<hash8>.pth" files)
    hash_prefix: str | None = None
    # other names the same content is published under
    aliases: tuple[str, ...] = ()
    # path of the file inside an installed package, e.g. the lpips heads inside ``lpips``
    package_data: tuple[str, str] | None = None


ASSETS: dict[str, WeightAsset] = {
    "inception": WeightAsset(
        filename="pt_inception-2015-12-05-6726825d.pth",
        url="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
        "pt_inception-2015-12-05-6726825d.pth",
        description="FID Inception-v3 (TensorFlow 2015-12-05 graph, pytorch-fid port)",
        hash_prefix="6726825d",
        aliases=("weights-inception-2015-12-05-6726825d.pth",),  # torch-fidelity's copy
    ),
    "alexnet": WeightAsset(
        filename="alexnet-owt-7be5be79.pth",
        url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        description="AlexNet ImageNet backbone for LPIPS-alex",
        hash_prefix="7be5be79",
    ),
    "vgg16": WeightAsset(
        filename="vgg16-397923af.pth",
        url="https://download.pytorch.org/models/vgg16-397923af.pth",
        description="VGG-16 ImageNet backbone for LPIPS-vgg",
        hash_prefix="397923af",
    ),
    "lpips-alex": WeightAsset(
        filename="lpips_v0.1_alex.pth",
        url="https://raw.githubusercontent.com/richzhang/PerceptualSimilarity/master/lpips/"
        "weights/v0.1/alex.pth",
        description="LPIPS v0.1 linear heads for AlexNet",
        package_data=("lpips", "weights/v0.1/alex.pth"),
    ),
    "lpips-vgg": WeightAsset(
        filename="lpips_v0.1_vgg.pth",
        url="https://raw.githubusercontent.com/richzhang/PerceptualSimilarity/master/lpips/"
        "weights/v0.1/vgg.pth",
        description="LPIPS v0.1 linear heads for VGG-16",
        package_data=("lpips", "weights/v0.1/vgg.pth"),
    ),
}


def search_dirs(weights_dir: str | os.PathLike | None = None) -> list[Path]:
    import torch

    dirs = []
    if weights_dir:
        dirs.append(Path(weights_dir))
    if os.environ.get("MOEBIUS_WEIGHTS_DIR"):
        dirs.append(Path(os.environ["MOEBIUS_WEIGHTS_DIR"]))
    dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    return dirs


def _package_file(package: str, relative: str) -> Path | None:
    # find_spec locates the package without importing it (lpips itself needs torchvision)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        candidate = Path(root) / relative
        if candidate.is_file():
            return candidate
    return None


def find_weights(
    name: str, weights_dir: str | os.PathLike | None = None, download: bool | None = None
) -> Path:
    """Path of the weight file for asset ``name`` (see ``ASSETS``), downloading it if allowed.

    ``download=None`` means: download unless the package's offline switch is set
    (:func:`moebius.weights.offline_switch`: ``HF_HUB_OFFLINE=1`` or ``MOEBIUS_OFFLINE=1``).
    """
    asset = ASSETS[name]
    dirs = search_dirs(weights_dir)
    for directory in dirs:
        for filename in (asset.filename, *asset.aliases):
            if (directory / filename).is_file():
                return directory / filename
    if asset.package_data:
        found = _package_file(*asset.package_data)
        if found is not None:
            return found

    where = ", ".join(str(d) for d in dirs)
    advice = (
        f"download {asset.url} and put it into --weights-dir DIR or $MOEBIUS_WEIGHTS_DIR "
        f"(looked in: {where})"
    )
    if download is None:
        download = offline_switch() is None
    if not download:
        raise InputError(f"missing {asset.description} weights '{asset.filename}': {advice}")

    import torch

    target_dir = dirs[0]
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / asset.filename
        print(f"downloading {asset.url} -> {target}")
        torch.hub.download_url_to_file(asset.url, str(target), hash_prefix=asset.hash_prefix)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; a hash mismatch a RuntimeError
        raise InputError(
            f"could not download {asset.description} weights '{asset.filename}' ({exc}); {advice}"
        ) from None
    return target


def load_weight_file(path: Path) -> dict:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"cannot read weight file {path}: {exc}") from None
    if not isinstance(state, dict):
        raise InputError(f"{path} is not a state dict")
    return state
