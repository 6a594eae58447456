"""How a batch job is cut into work, and how the processes of a job share it.

A chunk is always denoised as one batch with the same members, so its outputs are the same
bit for bit however the job is resumed: a chunk with any output missing is redone whole.
(Each item draws its own noise, but the networks' float arithmetic can differ with the
batch size.) Ranks take whole chunks, so the outputs do not depend on the number of processes
either."""

import math
from collections.abc import Callable
from typing import TypeVar

from moebius.distributed import RankFailed, World
from moebius.errors import exit_code, explain

T = TypeVar("T")


def chunks(count: int, size: int) -> list[range]:
    """Consecutive index ranges of ``size`` items (the last may be shorter)."""
    return [range(start, min(start + size, count)) for start in range(0, count, size)]


def pending(work: list[range], done: Callable[[int], bool]) -> list[range]:
    """The chunks in which some item is not ``done``."""
    return [chunk for chunk in work if not all(done(i) for i in chunk)]


def share(todo: list[range], world: World) -> list[range]:
    """This rank's chunks: every ``size``-th, from its rank on (dealt like cards, so neighbouring
    chunks, often of similar cost, go to different ranks)."""
    return todo[world.rank :: world.size]


def run_chunks(
    world: World,
    todo: list[range],
    process: Callable[[range], T],
    describe: Callable[[range], str],
    *,
    total: int,
    done: int = 0,
    desc: str = "",
    quiet: bool = False,
) -> list[T] | None:
    """``process`` each chunk of ``todo`` on the rank :func:`share` gives it; returns on rank 0
    the results in ``todo`` order (None on the others).

    The ranks work in rounds of one chunk each. After a round they exchange how many items they
    finished, which rank 0 shows as the whole job's progress (``total`` items, ``done`` of them
    before this run: count, rate, ETA), and whether they failed: a failure anywhere stops every
    rank after its current chunk with :class:`RankFailed` naming the rank, the chunk's items
    (``describe(chunk)``) and the cause.
    """
    from tqdm.auto import tqdm

    mine = share(todo, world)
    results: list[T] = []
    with tqdm(
        total=total, initial=done, desc=desc, unit="img", disable=quiet or not world.is_main
    ) as bar:
        for round_ in range(math.ceil(len(todo) / world.size)):
            chunk = mine[round_] if round_ < len(mine) else range(0)
            result, error, failure = None, None, None
            if chunk:
                try:
                    result = process(chunk)
                except Exception as exc:  # the others must hear of it before anyone exits
                    error = exc
                    failure = (describe(chunk), explain(exc), exit_code(exc))
            reports = world.exchange((len(chunk), failure))
            bar.update(sum(count for count, _ in reports))
            failed = [(rank, f) for rank, (_, f) in enumerate(reports) if f is not None]
            if failed:
                rank, (items, cause, code) = failed[0]
                raise RankFailed(f"rank {rank} failed on {items}: {cause}", code) from error
            gathered = world.gather(result)
            if gathered is not None:  # round r ran todo[r·size + rank] on each rank
                results += gathered[: len(todo) - round_ * world.size]
    return results if world.is_main else None
