"""Run resumable tasks in dependency order, several at a time in separate processes.

Small networks use one core better than they share two: on a 2-core AMD EPYC, two of the
recipe's teachers trained side by side on one thread each finished 1.24× sooner than one after
another on two threads each, so tasks that may run at once get one share of the threads each. A
task that has the machine to itself, because nothing else can start before it ends, gets every
thread. Among the tasks that may start, the earliest in the list goes first: list the longest
chain of work first, so that what others wait for is never left for last.
"""

import multiprocessing
import queue
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Task:
    """``work(*args)``, once every task named in ``after`` has finished. ``work`` must be a
    module-level function (it is sent to another process by name)."""

    name: str
    work: Callable[..., object]
    args: tuple = ()
    after: tuple[str, ...] = ()


def _on_threads(threads: int, work: Callable[..., object], args: tuple) -> None:
    torch.set_num_threads(threads)
    work(*args)


def run_tasks(
    tasks: Sequence[Task], finished: Callable[[str], bool], jobs: int, threads: int
) -> None:
    """Run every task of ``tasks`` that is not ``finished`` yet. With ``jobs`` > 1, up to
    ``jobs`` run at once, each in a fresh process with ``threads // jobs`` threads (all
    ``threads`` for a task that runs alone); the first error stops the others and is raised."""
    names = {task.name for task in tasks}
    pending = {task.name: task for task in tasks if not finished(task.name)}
    done = names - set(pending)
    for task in pending.values():
        missing = [d for d in task.after if d not in names and not finished(d)]
        if missing:
            raise ValueError(f"task {task.name!r} waits for {missing}, which nothing runs")

    def ready() -> list[Task]:
        return [task for task in pending.values() if set(task.after) <= done]

    if jobs <= 1:
        while pending:
            if not (startable := ready()):
                raise ValueError(f"tasks {sorted(pending)} wait for each other")
            task = pending.pop(startable[0].name)
            task.work(*task.args)
            done.add(task.name)
        return

    ended: queue.SimpleQueue = queue.SimpleQueue()
    running = 0
    # One process per task, so each starts with its own thread count and frees its memory;
    # leaving the block terminates whatever still runs (after an error or an interrupt).
    with multiprocessing.get_context("spawn").Pool(jobs, maxtasksperchild=1) as pool:
        while pending or running:
            starting = ready()[: jobs - running]
            alone = running == 0 and len(starting) == 1
            for task in starting:
                del pending[task.name]
                pool.apply_async(
                    _on_threads,
                    (threads if alone else max(1, threads // jobs), task.work, task.args),
                    callback=lambda _, name=task.name: ended.put((name, None)),
                    error_callback=lambda error, name=task.name: ended.put((name, error)),
                )
                running += 1
            if not running:
                raise ValueError(f"tasks {sorted(pending)} wait for each other")
            name, error = ended.get()
            running -= 1
            if error is not None:
                raise error
            done.add(name)
