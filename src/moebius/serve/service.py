"""What one running server holds: its limits, its models, the image store and the job queue."""

from dataclasses import dataclass, field

import anyio
from anyio.to_thread import run_sync

from moebius.serve.config import ServeConfig
from moebius.serve.jobs import JobQueue
from moebius.serve.models import ModelSet
from moebius.serve.store import ImageStore


@dataclass
class Service:
    config: ServeConfig
    models: ModelSet
    store: ImageStore = field(init=False)
    queue: JobQueue = field(init=False)

    def __post_init__(self):
        self.store = ImageStore(self.config.store_bytes, self.config.keep_seconds)
        self.queue = JobQueue(self.store, self.config.queue_size, self.config.keep_seconds)
        # decoding holds a full-size image per upload: bound how many run at once
        self._decoders = anyio.CapacityLimiter(self.config.decode_workers)

    def start(self) -> None:
        """Start the workers, and loading the diffusion model (no job reaches its worker
        before it is ready: :meth:`ModelSet.get` refuses them)."""
        for model in self.models.models:
            self.queue.start_lane(model.lane)
        self.models.start()

    def close(self) -> None:
        self.queue.close()

    async def in_thread(self, function, *args):
        """Run CPU-heavy work (decoding, encoding) off the event loop, a bounded number at once."""
        return await run_sync(function, *args, limiter=self._decoders)
