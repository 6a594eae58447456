"""Real photographs for the small-scale recipe, assembled by a script anyone can rerun.

Sources: photographs from Debian's wallpaper packages (``apt-get download`` + ``dpkg -x``,
nothing is installed) and scikit-image's bundled photos, or any folder of photos. Each file's
licence and copyright holder are read from its package's ``copyright`` file (DEP-5) and
recorded, with the file's checksum, in ``manifest.json``, which :func:`licence_markdown`
renders into ``docs/``. Only photographs are listed: the packages' abstract and vector
artwork would teach the models flat colour fields no photo has.

Held-out photos are written whole (short side :data:`HELDOUT_SIDE`) and never reach a
training stage; training photos are downscaled to :data:`TRAIN_SIDE` so that random
multi-scale crops (``moebius.train.data.random_crop``) can zoom in as well as out.
"""

import fnmatch
import hashlib
import json
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from moebius.errors import InputError
from moebius.files import atomic_write
from moebius.image_io import list_images

TRAIN_SIDE = 768  # short side of stored training photos; crops zoom from here down
HELDOUT_SIDE = 512  # the demo's working resolution
SKIMAGE = "scikit-image"


@dataclass(frozen=True)
class PhotoSource:
    name: str  # file stem in the prepared set
    package: str  # Debian binary package, or "scikit-image"
    path: str  # file inside the unpacked package, or scikit-image's loader name
    split: str  # "train" | "heldout"


def _debian(package: str, directory: str, split: str, **files: str) -> list[PhotoSource]:
    return [
        PhotoSource(name, package, f"{directory}/{file}", split) for name, file in files.items()
    ]


_MATE = "usr/share/backgrounds/mate/nature"
_LOMIRI = "usr/share/backgrounds"
_PLASMA = "usr/share/wallpapers"

# Chosen by looking at every image in the packages: photographs only. Held-out photos span
# the kinds of scene in the set (sea and sky, macro, mountains, water, animals, boats, forest,
# objects); the "dune" example is one of them.
PHOTOS: tuple[PhotoSource, ...] = tuple(
    _debian(
        "mate-backgrounds",
        _MATE,
        "train",
        aqua="Aqua.jpg",
        blinds="Blinds.jpg",
        fresh_flower="FreshFlower.jpg",
        garden="Garden.jpg",
        green_meadow="GreenMeadow.jpg",
        rain_drops="RainDrops.jpg",
        two_wings="TwoWings.jpg",
        wood="Wood.jpg",
        yellow_flower="YellowFlower.jpg",
    )
    + _debian(
        "mate-backgrounds",
        _MATE,
        "heldout",
        dune="Dune.jpg",
        storm="Storm.jpg",
        lady_bird="LadyBird.jpg",
    )
    + _debian(
        "lomiri-wallpapers-16.04",
        _LOMIRI,
        "train",
        bridge="Bridge_by_Sander_Klootwijk.jpg",
        dragonfly="Dragonfly_by_Bolly.jpg",
        fig="Picture_0B_by_freespace.jpg",
        brushes="Picture_1A_by_freespace.jpg",
        wine="Wine_by_Jakkub_Mede.jpg",
        aitzgorri="aitzgorri_by_Aitzol_Berasategi.jpg",
        analog_pattern="analogpattern_by_Peter_Nerlich.jpg",
        free="free_by_Peter_Nerlich.jpg",
        greentock="greentock_by_Peter_Nerlich.jpg",
        seeding="seeding_by_Clements_Engelhardt.jpg",
        sunset="sunset_by_Aitzol_Berasategi.jpg",
    )
    + _debian(
        "lomiri-wallpapers-16.04",
        _LOMIRI,
        "heldout",
        friends="friends_by_Aitzol_Berasategi.jpg",
        life="life_by_Aitzol_Berasategi.jpg",
        picos_de_europa="picosdeeuropa_by_Aitzol_Berasategi.jpg",
    )
    + _debian("lomiri-wallpapers-20.04", _LOMIRI, "train", kleiber="Kleiber_by_Lukas_Baubkus.jpg")
    + _debian(
        "plasma-workspace-wallpapers",
        _PLASMA,
        "train",
        by_the_water="BytheWater/contents/images/2560x1600.jpg",
        cold_ripple="ColdRipple/contents/images/2560x1600.jpg",
        darkest_hour="DarkestHour/contents/images/2560x1600.jpg",
        fallen_leaf="FallenLeaf/contents/images/2560x1600.jpg",
        grey="Grey/contents/images/2560x1600.jpg",
        kite="Kite/contents/images/2560x1600.jpg",
        one_stands_out="OneStandsOut/contents/images/2560x1600.jpg",
        summer_1am="summer_1am/contents/images/2560x1600.jpg",
    )
    + _debian(
        "plasma-workspace-wallpapers",
        _PLASMA,
        "heldout",
        colorful_cups="ColorfulCups/contents/images/2560x1600.jpg",
        evening_glow="EveningGlow/contents/images/2560x1600.jpg",
        path="Path/contents/images/2560x1600.jpg",
    )
    + [
        PhotoSource("astronaut", SKIMAGE, "astronaut", "train"),
        PhotoSource("coffee", SKIMAGE, "coffee", "train"),
        PhotoSource("camera", SKIMAGE, "camera", "train"),
        # held out so that tests and the README can use them without any download
        PhotoSource("chelsea", SKIMAGE, "chelsea", "heldout"),
        PhotoSource("rocket", SKIMAGE, "rocket", "heldout"),
    ]
)

# scikit-image ships no copyright file; these are the licences its loaders' docstrings state.
SKIMAGE_LICENCES = {
    "astronaut": ("public domain", "NASA (Eileen Collins)"),
    "coffee": ("CC0", "Rachel Michetti"),
    "camera": ("CC0", "Lav Varshney"),
    "chelsea": ("CC0", "Stefan van der Walt"),
    "rocket": ("public domain", "SpaceX"),
}


# ---------------------------------------------------------------------------- licences
@dataclass(frozen=True)
class CopyrightStanza:
    files: tuple[str, ...]
    copyright: str
    licence: str


def parse_copyright(text: str) -> list[CopyrightStanza]:
    """The ``Files`` paragraphs of a machine-readable (DEP-5) Debian copyright file."""
    stanzas = []
    for paragraph in re.split(r"\n\s*\n", text):
        fields: dict[str, list[str]] = {}
        current = None
        for line in paragraph.splitlines():
            if line[:1] in (" ", "\t") and current is not None:
                fields[current].append(line.strip())
            elif ":" in line:
                current, value = line.split(":", 1)
                current = current.strip().lower()
                fields[current] = [value.strip()]
        if "files" in fields and "license" in fields:
            files = tuple(" ".join(fields["files"]).split())
            holders = "; ".join(v for v in fields.get("copyright", []) if v)
            stanzas.append(CopyrightStanza(files, holders, fields["license"][0]))
    return stanzas


def _matches(pattern: str, path: str) -> bool:
    """DEP-5 patterns name files in the *source* tree, whose folders the binary package may
    rename (lomiri's ``16.04/x.jpg`` lands in ``usr/share/backgrounds/x.jpg``): a pattern
    matches a path suffix, or else the file name alone unless it is a bare ``*``."""
    if fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(path, "*/" + pattern):
        return True
    base = pattern.rsplit("/", 1)[-1]
    return base != "*" and fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], base)


def licence_of(stanzas: Sequence[CopyrightStanza], path: str) -> CopyrightStanza:
    """The last stanza whose patterns match ``path``, as DEP-5 prescribes."""
    found = [s for s in stanzas if any(_matches(p, path) for p in s.files)]
    if not found:
        raise InputError(f"the copyright file names no licence for {path}")
    return found[-1]


def _upstream_metadata(root: Path, path: str) -> dict[str, str]:
    """KDE wallpaper packages also carry the author and upstream licence per wallpaper."""
    parts = Path(path).parts
    if "contents" not in parts:
        return {}
    metadata = root.joinpath(*parts[: parts.index("contents")]) / "metadata.json"
    if not metadata.is_file():
        return {}
    plugin = json.loads(metadata.read_text()).get("KPlugin", {})
    authors = ", ".join(a.get("Name", "") for a in plugin.get("Authors", []))
    return {k: v for k, v in (("author", authors), ("licence", plugin.get("License"))) if v}


# ---------------------------------------------------------------------------- fetching
def unpack_debian_package(package: str, directory: Path) -> tuple[Path, str]:
    """``apt-get download`` the package into ``directory`` and ``dpkg -x`` it (once; reruns
    reuse the unpacked tree). Returns the unpacked root and the package version."""
    root = directory / package
    done = root / ".unpacked"
    if done.is_file():
        return root, done.read_text().strip()
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise InputError(
                f"{tool} is not available: the Debian photos cannot be fetched here; "
                "pass a folder of photos instead"
            )
    debs = directory / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["apt-get", "download", package], cwd=debs, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise InputError(f"apt-get download {package} failed: {result.stderr.strip()}")
    deb = max(debs.glob(f"{package}_*.deb"), key=lambda p: p.stat().st_mtime)
    version = subprocess.run(
        ["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    shutil.rmtree(root, ignore_errors=True)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    done.write_text(version + "\n")
    return root, version


def load_skimage_photo(name: str) -> Image.Image:
    import skimage.data

    pixels = np.asarray(getattr(skimage.data, name)())
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    return Image.fromarray(pixels[..., :3].astype(np.uint8))


# ---------------------------------------------------------------------------- writing
def _working_copy(image: Image.Image, short_side: int) -> Image.Image:
    """Downscale (never upscale) so the short side is ``short_side``."""
    image = image.convert("RGB")
    scale = short_side / min(image.size)
    if scale >= 1:
        return image
    size = (round(image.width * scale), round(image.height * scale))
    return image.resize(size, Image.Resampling.LANCZOS)


def _write(image: Image.Image, split: str, name: str, out: Path) -> tuple[str, list[int]]:
    side = TRAIN_SIDE if split == "train" else HELDOUT_SIDE
    work = _working_copy(image, side)
    relative = f"{split}/{name}.png"
    atomic_write(out / relative, lambda tmp: work.save(tmp, format="PNG"))
    return relative, list(work.size)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prepare_photos(
    out: Path,
    sources: Sequence[PhotoSource] = PHOTOS,
    download_dir: Path | None = None,
) -> dict:
    """Fetch ``sources``, write working copies under ``out/{train,heldout}/`` and
    ``out/manifest.json`` (source, licence, copyright and checksum of every file)."""
    import skimage

    download_dir = download_dir or out / "packages"
    records = []
    for source in sources:
        if source.split not in ("train", "heldout"):
            raise InputError(f"{source.name}: split must be train or heldout")
        if source.package == SKIMAGE:
            image = load_skimage_photo(source.path)
            licence, holder = SKIMAGE_LICENCES[source.path]
            record = {
                "version": skimage.__version__,
                "licence": licence,
                "copyright": holder,
                "sha256": hashlib.sha256(np.asarray(image).tobytes()).hexdigest(),
            }
        else:
            root, version = unpack_debian_package(source.package, download_dir)
            file = root / source.path
            if not file.is_file():
                raise InputError(f"{source.package} {version} has no {source.path}")
            copyright_file = root / "usr/share/doc" / source.package / "copyright"
            stanza = licence_of(parse_copyright(copyright_file.read_text()), source.path)
            with Image.open(file) as opened:
                image = opened.convert("RGB")
            record = {
                "version": version,
                "licence": stanza.licence,
                "copyright": stanza.copyright,
                "sha256": _sha256(file),
            }
            if upstream := _upstream_metadata(root, source.path):
                record["upstream"] = upstream
        relative, size = _write(image, source.split, source.name, out)
        records.append(
            asdict(source) | record | {"original_size": list(image.size)}
            | {"file": relative, "size": size}
        )  # fmt: skip
    return _finish_manifest(out, records)


def prepare_folder(out: Path, folder: Path, heldout: int) -> dict:
    """A folder of photos instead of the Debian set: the last ``heldout`` files (sorted by
    name) are held out. Their licence is the supplier's to know; it is recorded as such."""
    files = list_images(folder)
    if len(files) <= heldout or heldout < 1:
        raise InputError(
            f"{folder} holds {len(files)} photos; need more than the {heldout} held out (≥ 1)"
        )
    records = []
    for index, file in enumerate(files):
        split = "heldout" if index >= len(files) - heldout else "train"
        with Image.open(file) as opened:
            image = opened.convert("RGB")
        relative, size = _write(image, split, file.stem, out)
        records.append(
            {
                "name": file.stem,
                "package": "folder",
                "path": str(file),
                "split": split,
                "licence": "as supplied with the folder",
                "copyright": "",
                "sha256": _sha256(file),
                "original_size": list(image.size),
                "file": relative,
                "size": size,
            }
        )
    return _finish_manifest(out, records)


def _finish_manifest(out: Path, records: list[dict]) -> dict:
    names = [r["name"] for r in records]
    if len(set(names)) != len(names):
        raise InputError("two photos share a name; names must be unique")
    manifest = {
        "train_side": TRAIN_SIDE,
        "heldout_side": HELDOUT_SIDE,
        "photos": records,
    }
    text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    atomic_write(out / "manifest.json", lambda tmp: tmp.write_text(text))
    return manifest


def read_manifest(directory: Path) -> dict:
    path = Path(directory) / "manifest.json"
    if not path.is_file():
        raise InputError(f"no photo manifest at {path}; prepare the photos first")
    return json.loads(path.read_text())


def split_files(directory: Path, split: str) -> list[Path]:
    """The prepared photos of one split, in manifest order."""
    manifest = read_manifest(directory)
    return [Path(directory) / r["file"] for r in manifest["photos"] if r["split"] == split]


def licence_markdown(manifest: dict) -> str:
    """The manifest as a markdown table for ``docs/`` (one row per photo)."""
    lines = [
        "| photo | split | source | file | licence | copyright |",
        "|---|---|---|---|---|---|",
    ]
    for r in manifest["photos"]:
        source = r["package"] if "version" not in r else f"{r['package']} {r['version']}"
        licence = r["licence"]
        if upstream := r.get("upstream"):
            licence += f" (upstream: {upstream.get('licence', '?')}, {upstream.get('author', '?')})"
        holder = r["copyright"].replace("|", "/")
        lines.append(
            f"| {r['name']} | {r['split']} | {source} | `{r['path']}` | {licence} | {holder} |"
        )
    return "\n".join(lines) + "\n"
