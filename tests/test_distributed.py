"""Sharded batch inpainting and evaluation: real ``torchrun`` jobs of two processes (gloo on the
CPU) against a single process, with the tiny student + tiny VAE saved as a pipeline folder."""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_model, tiny_vae
from PIL import Image
from skimage import data

from moebius.cli import main
from moebius.distributed import World
from moebius.errors import InputError
from moebius.pipeline import MoebiusInpaintPipeline
from moebius.runtime import apply_runtime_args, available_cores

PHOTOS = (data.coffee, data.astronaut, data.chelsea, data.rocket)
COUNT, BATCH = 12, 2
# the thread count may change float summation order: one everywhere, to compare bit for bit
ONE_THREAD = ("--threads", "1", "--device", "cpu")
WORLD_VARIABLES = (
    "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
)  # fmt: skip


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tiny_pipeline")
    MoebiusInpaintPipeline(tiny_model(), tiny_vae()).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    """Twelve small photos and their masks, p00 … p11."""
    root = tmp_path_factory.mktemp("photos")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    for i in range(COUNT):
        photo = Image.fromarray(PHOTOS[i % len(PHOTOS)]()).resize((64 + 8 * (i % 3), 48))
        photo.save(root / "images" / f"p{i:02d}.png")
        mask = np.zeros((48, photo.width), np.uint8)
        mask[8 + i : 36, 10 : 40 + i] = 255
        Image.fromarray(mask).save(root / "masks" / f"p{i:02d}.png")
    return root / "images", root / "masks"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*argv) -> subprocess.Popen:
    """``torchrun --nproc_per_node 2 -m moebius.cli ARGV`` in its own process group."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
        "-m", "moebius.cli", *map(str, argv),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in WORLD_VARIABLES}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(job: subprocess.Popen, timeout: float = 120) -> tuple[str, str]:
    try:
        return job.communicate(timeout=timeout)
    finally:
        if job.poll() is None:  # hung: fail the test, leave no process behind
            os.killpg(job.pid, signal.SIGKILL)
            job.communicate()


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (torchrun's workers), from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (name) state ppid …"; the name may hold spaces, so split after its ")"
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):  # a process that just ended
            continue
    return sorted(found)


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def inpaint_args(model_dir: Path, folders: tuple[Path, Path], out: Path) -> list:
    images, masks = folders
    return ["inpaint", "--images", images, "--masks", masks, "--out", out,
            "--model", model_dir, "--batch-size", BATCH, "--steps", "3", "-q", *ONE_THREAD]  # fmt: skip


def test_two_processes_write_what_one_does_and_a_killed_run_resumes_exactly_once(
    model_dir, folders, tmp_path, capsys
):
    single = tmp_path / "single"
    assert main([str(a) for a in inpaint_args(model_dir, folders, single)]) == 0
    expected = contents(single)
    assert len(expected) == COUNT + 1  # and run.json

    out = tmp_path / "sharded"
    job = torchrun(*inpaint_args(model_dir, folders, out))
    while job.poll() is None and not list(out.glob("p*.png")):
        time.sleep(0.005)
    workers = children(job.pid)
    assert len(workers) == 2, "the job ended before it could be killed"
    os.kill(workers[-1], signal.SIGKILL)  # one rank dies; torchrun stops the other
    finish(job, timeout=60)
    assert job.returncode != 0
    survivors = {p.name: p.stat().st_mtime_ns for p in out.glob("p*.png")}
    assert 0 < len(survivors) < COUNT, "the kill came after the last output"
    complete = [
        names
        for names in ([f"p{i:02d}.png", f"p{i + 1:02d}.png"] for i in range(0, COUNT, BATCH))
        if all(name in survivors for name in names)
    ]

    rerun = torchrun(*inpaint_args(model_dir, folders, out))
    stdout, stderr = finish(rerun)
    assert rerun.returncode == 0, stderr[-3000:]
    skipped = BATCH * len(complete)
    assert f"{COUNT - skipped} written, {skipped} skipped" in stdout
    assert stdout.count(" written, ") == 1  # rank 0 alone reports
    assert contents(out) == expected  # every output once, nothing else (no temporary files)
    for name in (name for names in complete for name in names):
        assert (out / name).stat().st_mtime_ns == survivors[name]  # finished work is kept


def test_a_failing_rank_names_the_items_and_the_others_stop_after_their_chunk(
    model_dir, folders, tmp_path
):
    out = tmp_path / "out"
    (out / "p01.png").mkdir(parents=True)  # p01's output cannot be written
    job = torchrun(*inpaint_args(model_dir, folders, out))
    _, stderr = finish(job)
    assert job.returncode != 0
    # the first round: chunk p00-01 on rank 0, p02-03 on rank 1, which finishes it and stops
    assert "error: rank 0 failed on p00.png, p01.png: IsADirectoryError" in stderr
    written = sorted(p.name for p in out.iterdir() if p.is_file())
    assert written == ["p00.png", "p02.png", "p03.png", "run.json"]


def test_eval_in_two_processes_scores_like_one(model_dir, folders, tmp_path):
    images, _ = folders
    argv = ["eval", "--protocol", "ffhq-256", "--images", images, "--model", model_dir,
            "--limit", "4", "--batch-size", "2", "--random-weights", "--bootstrap", "20",
            "--steps", "2", *ONE_THREAD]  # fmt: skip
    assert main([str(a) for a in [*argv, "--out", tmp_path / "single"]]) == 0
    job = torchrun(*argv, "--out", tmp_path / "sharded")
    stdout, stderr = finish(job)
    assert job.returncode == 0, stderr[-3000:]
    assert stdout.count("| Moebius (paper) |") == 1  # rank 0 alone reports

    one, two = (
        json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("single", "sharded")
    )
    assert set(one["metrics"]) == {"fid", "lpips", "u_ids", "p_ids", "psnr", "ssim", "psnr_hole", "ssim_hole"}  # fmt: skip
    assert two["metrics"] == one["metrics"] and two["intervals"] == one["intervals"]
    assert (one["processes"], two["processes"]) == (1, 2)
    for name in ("per_image.jsonl", "contact_sheet.png", "predictions", "masks", "inputs"):
        a, b = tmp_path / "single" / name, tmp_path / "sharded" / name
        assert (contents(a) == contents(b)) if a.is_dir() else (a.read_bytes() == b.read_bytes())


TORCHRUN = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}  # fmt: skip


def test_world_from_torchrun_variables():
    assert World.from_env({}) == World(rank=0, size=1, local_rank=0, local_size=1)
    assert World.from_env(TORCHRUN) == World(rank=1, size=2, local_rank=1, local_size=2)
    # no LOCAL_WORLD_SIZE (a hand-made launcher): every rank is assumed to share the machine
    assert World.from_env({**TORCHRUN, "LOCAL_WORLD_SIZE": ""}).local_size == 2


@pytest.mark.parametrize(
    "change, message",
    [
        ({"RANK": "2"}, "RANK=2 must be in 0 … 1 (WORLD_SIZE=2)"),
        ({"MASTER_ADDR": None}, "WORLD_SIZE=2 but MASTER_ADDR not set"),
        ({"RANK": None, "MASTER_PORT": None}, "RANK and MASTER_PORT not set"),
        ({"LOCAL_RANK": "one"}, "LOCAL_RANK='one' is not an integer"),
        ({"LOCAL_RANK": "2"}, "LOCAL_RANK=2 must be in 0 … 1"),
        ({"LOCAL_WORLD_SIZE": "3"}, "LOCAL_WORLD_SIZE=3 must be in 1 … WORLD_SIZE=2"),
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE=0 must be at least 1"),
        ({"MASTER_PORT": "70000"}, "MASTER_PORT=70000 is not a TCP port"),
    ],
)
def test_bad_world_settings_are_one_line_errors(
    change, message, model_dir, folders, tmp_path, monkeypatch, capsys
):
    for name, value in {**TORCHRUN, **change}.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        World.from_env()
    code = main([str(a) for a in inpaint_args(model_dir, folders, tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_ranks_on_the_cpu_share_the_cores_unless_told():
    args = argparse.Namespace(device="cpu", dtype="auto", threads=None)
    try:
        runtime = apply_runtime_args(args, World(rank=1, size=4, local_rank=1, local_size=2))
        assert runtime.threads == torch.get_num_threads() == max(1, available_cores() // 2)
        args.threads = 3
        assert (
            apply_runtime_args(args, World(rank=1, size=2, local_rank=1, local_size=2)).threads == 3
        )
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(1)  # the suite's setting (conftest)
