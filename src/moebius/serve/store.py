"""Images kept in memory between requests: uploads (so a browser sends a photo once per edit
session, not with every run) and results (so the next edit can start from one), each under an
unguessable id, dropped when unused for a while or when the total grows past a budget."""

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from PIL import Image


def new_id() -> str:
    """128 random bits, URL-safe: ids are capabilities, so they must not be guessable."""
    return secrets.token_urlsafe(16)


@dataclass
class StoredImage:
    """An RGB image, and for results the PNG the client downloads."""

    image: Image.Image
    png: bytes | None = None
    origin: str = "upload"  # "upload" or "result"
    used: float = field(default_factory=time.monotonic)

    @property
    def nbytes(self) -> int:
        width, height = self.image.size
        return width * height * 3 + len(self.png or b"")


class ImageStore:
    """Least-recently-used images under a byte budget and an idle time limit. An entry larger
    than the whole budget is still kept (alone): limits on single images are checked upstream."""

    def __init__(self, budget_bytes: int, keep_seconds: float):
        self.budget_bytes = budget_bytes
        self.keep_seconds = keep_seconds
        self._entries: OrderedDict[str, StoredImage] = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()

    def put(self, entry: StoredImage) -> str:
        key = new_id()
        with self._lock:
            self._entries[key] = entry
            self._total += entry.nbytes
            self._evict(keep=key)
        return key

    def get(self, key: str) -> StoredImage | None:
        """The entry (now the most recently used), or None if unknown or dropped."""
        with self._lock:
            self._evict()
            entry = self._entries.get(key)
            if entry is not None:
                entry.used = time.monotonic()
                self._entries.move_to_end(key)
            return entry

    def remove(self, key: str) -> None:
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is not None:
                self._total -= entry.nbytes

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return self._total

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _evict(self, keep: str | None = None) -> None:
        now = time.monotonic()
        for key in list(self._entries):
            entry = self._entries[key]
            over_budget = self._total > self.budget_bytes
            if key == keep or (not over_budget and now - entry.used <= self.keep_seconds):
                break  # oldest first: the rest were used more recently
            del self._entries[key]
            self._total -= entry.nbytes
