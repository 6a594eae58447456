"""Who this process is in a ``torchrun`` job, and the few collective steps the batch commands
(``moebius inpaint --images``, ``moebius eval``) take together.

torchrun (or another launcher) describes the job in environment variables: ``WORLD_SIZE``,
``RANK``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``. A plain run has
none of them and is a world of one, in which every collective step is a local no-op: single- and
multi-process runs share one code path.

The batch commands exchange only small control messages (progress counts, failures, settings)
and metric features, so they always join a gloo group, also on GPUs: it works on CPU objects and
every operation has a timeout, so a rank that dies or hangs cannot stall the others forever.
"""

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from moebius.errors import InputError, MoebiusError, exit_code, explain

# a collective waits this long for the slowest rank: it must outlast a chunk and a model load
TIMEOUT = timedelta(minutes=30)

T = TypeVar("T")


class RankFailed(MoebiusError):
    """Another rank (or this one, inside a shared step) failed; every rank stops with this.
    ``exit_code``: 2 when the cause was bad input, 1 for an internal error."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def _integer(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if value is None or value.strip() == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise InputError(
            f"{name}={value!r} is not an integer (torchrun sets it; check the launcher)"
        ) from None


@dataclass(frozen=True)
class World:
    """This process's place in the job: ``rank`` of ``size`` processes in all, ``local_rank`` of
    ``local_size`` on this machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "World":
        """The world torchrun's variables describe (a world of one without them); inconsistent
        or malformed values are one-line InputErrors."""
        env = os.environ if env is None else env
        size = _integer(env, "WORLD_SIZE")
        rank, local_rank = _integer(env, "RANK"), _integer(env, "LOCAL_RANK")
        local_size, port = _integer(env, "LOCAL_WORLD_SIZE"), _integer(env, "MASTER_PORT")
        size = 1 if size is None else size
        if size < 1:
            raise InputError(f"WORLD_SIZE={size} must be at least 1")
        if size > 1:
            unset = [n for n, v in (("RANK", rank), ("LOCAL_RANK", local_rank)) if v is None]
            unset += [n for n in ("MASTER_ADDR", "MASTER_PORT") if not env.get(n, "").strip()]
            if unset:
                raise InputError(
                    f"WORLD_SIZE={size} but {' and '.join(unset)} not set; launch with torchrun "
                    "(or set RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in every process)"
                )
        rank, local_rank = rank or 0, local_rank or 0
        if not 0 <= rank < size:
            raise InputError(f"RANK={rank} must be in 0 … {size - 1} (WORLD_SIZE={size})")
        # without LOCAL_WORLD_SIZE (torchrun sets it) assume every rank shares this machine
        local_size = size if local_size is None else local_size
        if not 1 <= local_size <= size:
            raise InputError(f"LOCAL_WORLD_SIZE={local_size} must be in 1 … WORLD_SIZE={size}")
        if not 0 <= local_rank < local_size:
            raise InputError(
                f"LOCAL_RANK={local_rank} must be in 0 … {local_size - 1} "
                f"(LOCAL_WORLD_SIZE={local_size})"
            )
        if port is not None and not 0 < port < 65536:
            raise InputError(f"MASTER_PORT={port} is not a TCP port")
        return cls(rank, size, local_rank, local_size)

    # ------------------------------------------------------------------ collectives
    def exchange(self, value: Any) -> list:
        """Every rank's ``value``, in rank order, on every rank."""
        if self.size == 1:
            return [value]
        import torch.distributed as dist

        values = [None] * self.size
        with _lost_contact():
            dist.all_gather_object(values, value)
        return values

    def gather(self, value: Any) -> list | None:
        """Every rank's ``value``, in rank order, on rank 0; None on the others."""
        if self.size == 1:
            return [value]
        import torch.distributed as dist

        values = [None] * self.size if self.is_main else None
        with _lost_contact():
            dist.gather_object(value, values, dst=0)
        return values

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if self.size == 1:
            return value
        import torch.distributed as dist

        box = [value]
        with _lost_contact():
            dist.broadcast_object_list(box, src=0)
        return box[0]

    # ------------------------------------------------------------------ shared steps
    def _portable(self, error: Exception | None) -> RankFailed | None:
        """What the other ranks raise for ``error`` (arbitrary exceptions may not pickle)."""
        if error is None:
            return None
        return RankFailed(f"rank {self.rank}: {explain(error)}", exit_code(error))

    def agree(self, error: Exception | None) -> None:
        """Raise on every rank if ``error`` is set on any: this rank's own error as it is, the
        first other rank's as :class:`RankFailed`."""
        errors = self.exchange(self._portable(error))
        if error is not None:
            raise error
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first

    def run_on_main(self, step: Callable[[], T]) -> T:
        """``step()`` on rank 0 alone (a check-then-write that must not race), its result on
        every rank, its error raised on every rank."""
        value, error = _attempt(step) if self.is_main else (None, None)
        value, portable = self.broadcast((value, self._portable(error)))
        if error is not None:
            raise error
        if portable is not None:
            raise portable
        return value

    def run_everywhere(self, step: Callable[[], T], main_first: bool = False) -> T:
        """``step()`` on every rank (with ``main_first``, rank 0's run completes before the
        others start, so a download happens once); if it fails on any rank, every rank raises."""
        value, error = None, None
        if self.is_main or not main_first:
            value, error = _attempt(step)
        if main_first and self.size > 1:
            self.agree(error)
            if not self.is_main:
                value, error = _attempt(step)
        self.agree(error)
        return value

    def require_same(self, text: str, what: str) -> None:
        """Refuse to go on unless every rank computed the same ``text`` (e.g. the list of input
        files: on several machines the folders must be one shared filesystem)."""
        digests = self.exchange(hashlib.sha256(text.encode()).hexdigest())
        different = [rank for rank, digest in enumerate(digests) if digest != digests[0]]
        if different:
            raise InputError(
                f"ranks {different} see other {what} than rank 0; on several machines every "
                "folder must be on a filesystem they share"
            )

    def require_shared(self, path: Path) -> None:
        """Refuse to go on unless every rank reads the file rank 0 just wrote at ``path``
        (``--out`` must be one folder for all ranks, not one per machine)."""
        try:
            text = path.read_text()
        except OSError:
            text = ""
        self.require_same(text, f"contents of {path} (written by rank 0)")


@contextlib.contextmanager
def _lost_contact() -> Iterator[None]:
    try:
        yield
    except RuntimeError as exc:  # gloo: a peer's connection dropped, or the timeout passed
        raise RankFailed(f"lost contact with another rank (died or hung): {explain(exc)}") from exc


def _attempt(step: Callable[[], T]) -> tuple[T | None, Exception | None]:
    try:
        return step(), None
    except Exception as exc:  # handed to the other ranks, then raised here too
        return None, exc


SINGLE = World()


@contextlib.contextmanager
def session(env: Mapping[str, str] | None = None) -> Iterator[World]:
    """The world of this process, joined to its gloo group for the duration when it has
    several ranks (an existing group, e.g. a caller's, is used and left as it is)."""
    world = World.from_env(env)
    if world.size == 1:
        yield world
        return
    import torch.distributed as dist

    if dist.is_initialized():
        yield world
        return
    dist.init_process_group("gloo", timeout=TIMEOUT, rank=world.rank, world_size=world.size)
    try:
        yield world
    finally:
        dist.destroy_process_group()
