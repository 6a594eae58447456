"""Inpainting jobs: bounded queues, one worker thread per lane, progress events per job.

A lane is a queue with one worker: the diffusion model's jobs run one at a time (one model in
memory, all of the machine for each job), and the instant OpenCV fills have a lane of their own,
so a preview never waits behind a diffusion run. The web server's event loop never runs a model:
it submits, reads states and streams events, so it stays responsive while a job runs.

Each job records its own events (queued with its position, running, step k of n, then done,
error or cancelled); a subscriber gets that history and then the new ones, in order, and only
its own job's. Cancelling stops a queued job at once and a running one before its next step.
"""

import asyncio
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from PIL import Image

from moebius.errors import InputError
from moebius.sampling import Cancelled
from moebius.serve.images import png_bytes
from moebius.serve.store import ImageStore, StoredImage, new_id
from moebius.settings import InpaintSettings

log = logging.getLogger("moebius.serve")

MAX_JOB_RECORDS = 10_000
MAX_RETRY_AFTER = 600  # seconds


class State(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = (State.DONE, State.FAILED, State.CANCELLED)


@dataclass(frozen=True)
class Event:
    """One server-sent event: ``name`` is queued, running, step, done, error or cancelled."""

    name: str
    data: dict[str, Any]


class QueueFull(Exception):
    def __init__(self, lane: str, retry_after: int):
        super().__init__(f"the {lane} queue is full; retry in {retry_after} s")
        self.retry_after = retry_after


class Closed(Exception):
    """The queue is shutting down."""


@dataclass
class Job:
    """One photo + mask to inpaint with one model. ``settings`` are final (seed drawn)."""

    model: str
    lane: str
    pipeline: Any
    image: Image.Image | None
    mask: Image.Image | None
    settings: InpaintSettings
    id: str = field(default_factory=new_id)
    state: State = State.QUEUED
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    done: int = 0
    total: int = 0
    result_id: str | None = None
    size: tuple[int, int] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    error: tuple[str, str] | None = None  # (code, detail)
    cancel: threading.Event = field(default_factory=threading.Event)
    events: list[Event] = field(default_factory=list)
    subscribers: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = field(default_factory=list)

    def __post_init__(self):
        self.total = self.settings.denoising_steps


@dataclass
class _Lane:
    name: str
    waiting: deque = field(default_factory=deque)
    running: Job | None = None
    mean_seconds: float | None = None  # smoothed run time, for Retry-After
    thread: threading.Thread | None = None


class JobQueue:
    """Submit, inspect, cancel and follow jobs; results go into ``store``."""

    def __init__(self, store: ImageStore, queue_size: int, keep_seconds: float):
        self.store = store
        self.queue_size = queue_size
        self.keep_seconds = keep_seconds
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._jobs: dict[str, Job] = {}
        self._lanes: dict[str, _Lane] = {}
        self._closed = False

    # ------------------------------------------------------------------ lanes
    def start_lane(self, name: str) -> None:
        with self._lock:
            if name in self._lanes:
                return
            lane = self._lanes[name] = _Lane(name)
            lane.thread = threading.Thread(
                target=self._work, args=(lane,), name=f"moebius-{name}", daemon=True
            )
            lane.thread.start()

    def check_room(self, lane: str) -> None:
        """Raise :class:`QueueFull` now if ``lane`` has no room, before costly decoding."""
        with self._lock:
            self._check_room(self._lanes[lane])

    def _check_room(self, lane: _Lane) -> None:
        if self._closed:
            raise Closed("the server is shutting down")
        if len(lane.waiting) >= self.queue_size:
            waits = (len(lane.waiting) + 1) * (lane.mean_seconds or 1.0)
            raise QueueFull(lane.name, min(MAX_RETRY_AFTER, max(1, math.ceil(waits))))

    # ------------------------------------------------------------------ jobs
    def submit(self, job: Job) -> Job:
        with self._lock:
            lane = self._lanes[job.lane]
            self._check_room(lane)
            self._prune()
            self._jobs[job.id] = job
            lane.waiting.append(job)
            self._publish(job, "queued", {"position": len(lane.waiting)})
            self._wake.notify_all()
        return job

    def get(self, job_id: str) -> Job | None:
        """The job, unless unknown or finished longer than ``keep_seconds`` ago."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None and self._expired(job, time.time()):
                del self._jobs[job_id]
                return None
            return job

    def _expired(self, job: Job, now: float) -> bool:
        return job.state in FINISHED and now - job.finished > self.keep_seconds

    def position(self, job: Job) -> int | None:
        """1 = next to run; None unless queued."""
        with self._lock:
            if job.state is not State.QUEUED:
                return None
            return self._lanes[job.lane].waiting.index(job) + 1

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued job now, a running one before its next step; forget a finished one
        (its record and result). None if there is no such job."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if job.state is State.QUEUED:
                lane = self._lanes[job.lane]
                lane.waiting.remove(job)
                self._finish(job, State.CANCELLED)
                self._announce_positions(lane)
            elif job.state is State.RUNNING:
                job.cancel.set()
            else:
                self._forget(job)
            return job

    def forget(self, job: Job) -> None:
        """Drop a finished job's record and result (their reader has them)."""
        with self._lock:
            self._forget(job)

    def _forget(self, job: Job) -> None:
        self._jobs.pop(job.id, None)
        if job.result_id is not None:
            self.store.remove(job.result_id)

    # ------------------------------------------------------------------ events
    def subscribe(self, job: Job) -> asyncio.Queue:
        """An asyncio queue (of the running loop) that receives the job's events so far, then
        each new one as it happens."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        with self._lock:
            for event in job.events:
                queue.put_nowait(event)
            job.subscribers.append((loop, queue))
        return queue

    def unsubscribe(self, job: Job, queue: asyncio.Queue) -> None:
        with self._lock:
            job.subscribers = [(lp, q) for lp, q in job.subscribers if q is not queue]

    def _publish(self, job: Job, name: str, data: dict[str, Any]) -> None:
        """Record and deliver one event; called with the lock held, from any thread."""
        event = Event(name, data)
        job.events.append(event)
        alive = []
        for loop, queue in job.subscribers:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
                alive.append((loop, queue))
            except RuntimeError:  # that subscriber's event loop has closed
                pass
        job.subscribers = alive

    def _announce_positions(self, lane: _Lane) -> None:
        for position, waiting in enumerate(lane.waiting, start=1):
            self._publish(waiting, "queued", {"position": position})

    def _finish(self, job: Job, state: State, error: tuple[str, str] | None = None) -> None:
        job.state, job.error, job.finished = state, error, time.time()
        job.image = job.mask = None  # the inputs are no longer needed: free them now
        if state is State.DONE:
            self._publish(
                job,
                "done",
                {
                    "image_id": job.result_id,
                    "width": job.size[0],
                    "height": job.size[1],
                    "seed": job.settings.seed,
                    "timings": job.timings,
                    "warnings": job.warnings,
                },
            )
        elif state is State.FAILED:
            self._publish(job, "error", {"error": error[0], "detail": error[1]})
        else:
            self._publish(job, "cancelled", {"step": job.done, "steps": job.total})

    # ------------------------------------------------------------------ workers
    def _work(self, lane: _Lane) -> None:
        while True:
            with self._lock:
                while not lane.waiting and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                job = lane.waiting.popleft()
                job.state, job.started = State.RUNNING, time.time()
                lane.running = job
                self._publish(job, "running", {"steps": job.total})
                self._announce_positions(lane)
            self._run(job)
            with self._lock:
                lane.running = None
                seconds = job.finished - job.started
                previous = lane.mean_seconds
                lane.mean_seconds = seconds if previous is None else 0.7 * previous + 0.3 * seconds

    def _run(self, job: Job) -> None:
        def on_step(progress) -> None:
            with self._lock:
                job.done, job.total = progress.done, progress.total
                self._publish(job, "step", {"step": progress.done, "steps": progress.total})

        try:
            output = job.pipeline(
                job.image, job.mask, settings=job.settings, on_step=on_step, cancel=job.cancel
            )
            clock = time.perf_counter()
            image = output.images[0]
            stored = StoredImage(image, png_bytes(image), origin="result")
            timings = dict(output.timings, png=time.perf_counter() - clock)
        except Cancelled:
            with self._lock:
                self._finish(job, State.CANCELLED)
        except InputError as exc:  # e.g. a photo too narrow for the working size
            with self._lock:
                self._finish(job, State.FAILED, ("invalid_input", " ".join(str(exc).split())))
        except Exception as exc:
            log.exception("job %s failed", job.id)
            with self._lock:
                self._finish(job, State.FAILED, ("internal_error", f"{type(exc).__name__}: {exc}"))
        else:
            result_id = self.store.put(stored)
            with self._lock:
                job.result_id, job.size = result_id, image.size
                job.timings = {"queue": job.started - job.created, **timings}
                job.warnings = [warning.message for warning in output.warnings]
                job.settings = output.settings
                self._finish(job, State.DONE)

    # ------------------------------------------------------------------ housekeeping
    def _prune(self) -> None:
        """Forget jobs finished longer than ``keep_seconds`` ago, and the oldest finished ones
        beyond :data:`MAX_JOB_RECORDS` (on each submission, so records stay bounded)."""
        now = time.time()
        finished = sorted(
            (job for job in self._jobs.values() if job.state in FINISHED),
            key=lambda job: job.finished,
        )
        excess = len(self._jobs) - MAX_JOB_RECORDS
        for index, job in enumerate(finished):
            if index < excess or self._expired(job, now):
                self._jobs.pop(job.id, None)

    def close(self, timeout: float = 10.0) -> None:
        """Cancel every job, end every event stream, and stop the workers."""
        with self._lock:
            self._closed = True
            for lane in self._lanes.values():
                while lane.waiting:
                    self._finish(lane.waiting.popleft(), State.CANCELLED)
                if lane.running is not None:
                    lane.running.cancel.set()
            self._wake.notify_all()
            threads = [lane.thread for lane in self._lanes.values() if lane.thread is not None]
        for thread in threads:
            thread.join(timeout)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                name: {"waiting": len(lane.waiting), "running": lane.running is not None}
                for name, lane in self._lanes.items()
            }
