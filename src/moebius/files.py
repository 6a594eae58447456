"""Writing files so that nobody ever sees half of one: a reader finds the old file or the new
one, and a killed run leaves at most a dotted temporary file that the next run sweeps away."""

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

TEMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path`` so readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | os.PathLike, document: Any) -> None:
    write_text(path, json.dumps(document, indent=2) + "\n")


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete the temporary files :func:`atomic_write` leaves when a process is killed
    mid-write; returns how many. Only our own pattern (``.<name>.<random>.tmp``) is touched."""
    removed = 0
    for stale in Path(folder).glob(f".*{TEMP_SUFFIX}"):
        if stale.is_file():
            stale.unlink(missing_ok=True)
            removed += 1
    return removed
