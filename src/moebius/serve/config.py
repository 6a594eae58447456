"""The service's limits: what one request may carry and what the server keeps."""

from dataclasses import dataclass

MB = 1 << 20


@dataclass(frozen=True)
class ServeConfig:
    """``moebius serve``'s options that bound work and memory (see ``moebius serve --help``)."""

    max_upload_bytes: int = 64 * MB  # one request's whole body
    max_pixels: int = 40_000_000  # width × height of one image, checked from its header
    queue_size: int = 8  # jobs waiting per worker (the running one not counted)
    keep_seconds: float = 30 * 60  # finished jobs, results and uploaded images, since last use
    store_bytes: int = 1024 * MB  # uploaded images and results together, decoded
    cors_origins: tuple[str, ...] = ()  # browser origins other than the server's own
    decode_workers: int = 2  # uploads decoded at once (each holds a full-size image)

    def __post_init__(self):
        for name in ("max_upload_bytes", "max_pixels", "queue_size", "store_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.keep_seconds <= 0:
            raise ValueError(f"keep_seconds must be positive, got {self.keep_seconds}")
