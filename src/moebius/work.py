"""How a batch job is cut into work: fixed chunks of the sorted item list.

A chunk is always denoised as one batch with the same members, so its outputs are the same
bit for bit however the job is resumed: a chunk with any output missing is redone whole.
(Each item draws its own noise, but the networks' float arithmetic can differ with the
batch size.)"""

from collections.abc import Callable


def chunks(count: int, size: int) -> list[range]:
    """Consecutive index ranges of ``size`` items (the last may be shorter)."""
    return [range(start, min(start + size, count)) for start in range(0, count, size)]


def pending(work: list[range], done: Callable[[int], bool]) -> list[range]:
    """The chunks in which some item is not ``done``."""
    return [chunk for chunk in work if not all(done(i) for i in chunk)]
