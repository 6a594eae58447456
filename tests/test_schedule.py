"""moebius.reproduce.schedule: tasks run after what they wait for, side by side in separate
processes with a share of the threads each, all of them when alone; the first error stops the
rest; finished tasks are skipped."""

import json
import os
import time
from pathlib import Path

import pytest
import torch

from moebius.reproduce.schedule import Task, run_tasks


def _record(folder: str, name: str, meet: str | None = None) -> None:
    """Write what this task saw; with ``meet``, first wait for that task to be running too."""
    started = time.time()
    (Path(folder) / f"{name}.running").touch()
    if meet is not None:
        deadline = time.monotonic() + 60
        while not (Path(folder) / f"{meet}.running").exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{meet} never ran beside {name}")
            time.sleep(0.02)
    seen = {"pid": os.getpid(), "threads": torch.get_num_threads(), "started": started}
    (Path(folder) / f"{name}.json").write_text(json.dumps(seen | {"ended": time.time()}))


def _fail(folder: str, name: str) -> None:
    raise RuntimeError(f"{name} failed")


def _wait_long(folder: str, name: str) -> None:
    (Path(folder) / f"{name}.running").touch()
    time.sleep(120)
    (Path(folder) / f"{name}.json").write_text("{}")


def _seen(folder: Path, name: str) -> dict:
    return json.loads((folder / f"{name}.json").read_text())


def test_tasks_run_side_by_side_after_what_they_wait_for(tmp_path):
    folder = str(tmp_path)
    tasks = [
        Task("first", _record, (folder, "first")),
        # these two can only finish if they run at the same time
        Task("left", _record, (folder, "left", "right"), after=("first",)),
        Task("right", _record, (folder, "right", "left"), after=("first",)),
        Task("last", _record, (folder, "last"), after=("left", "right")),
    ]
    run_tasks(tasks, lambda name: (tmp_path / f"{name}.json").exists(), jobs=2, threads=2)
    first, left, right, last = (_seen(tmp_path, t.name) for t in tasks)
    assert first["ended"] <= min(left["started"], right["started"])
    assert max(left["ended"], right["ended"]) <= last["started"]
    assert len({first["pid"], left["pid"], right["pid"], last["pid"], os.getpid()}) == 5
    # alone on the machine: every thread; side by side: one each
    assert (first["threads"], left["threads"], right["threads"], last["threads"]) == (2, 1, 1, 2)


def test_finished_tasks_are_skipped_and_one_job_runs_in_order_here(tmp_path):
    folder = str(tmp_path)
    (tmp_path / "done.json").write_text("{}")
    tasks = [
        Task("done", _fail, (folder, "done")),  # would fail if it ran again
        Task("second", _record, (folder, "second"), after=("done",)),
        Task("third", _record, (folder, "third"), after=("second",)),
    ]
    run_tasks(tasks, lambda name: (tmp_path / f"{name}.json").exists(), jobs=1, threads=1)
    second, third = _seen(tmp_path, "second"), _seen(tmp_path, "third")
    assert second["pid"] == third["pid"] == os.getpid()
    assert second["ended"] <= third["started"]


def test_the_first_error_stops_the_other_tasks_and_is_raised(tmp_path):
    folder = str(tmp_path)
    tasks = [
        Task("slow", _wait_long, (folder, "slow")),
        Task("broken", _fail, (folder, "broken")),
        Task("after", _record, (folder, "after"), after=("broken",)),
    ]
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="broken failed"):
        run_tasks(tasks, lambda name: False, jobs=2, threads=2)
    assert time.monotonic() - started < 60  # the slow one did not run its two minutes out
    assert not (tmp_path / "slow.json").exists() and not (tmp_path / "after.json").exists()


def test_a_task_waiting_for_something_nothing_runs_is_refused(tmp_path):
    tasks = [Task("orphan", _record, (str(tmp_path), "orphan"), after=("missing",))]
    with pytest.raises(ValueError, match="waits for \\['missing'\\]"):
        run_tasks(tasks, lambda name: False, jobs=2, threads=2)
    assert not (tmp_path / "orphan.json").exists()
