"""Throughput of batch inpainting in one process against several under torchrun, on this machine.

    python scripts/scaling_bench.py --out scaling               # 1 process x 2 threads vs 2 x 1
    python scripts/scaling_bench.py --configs 1x2,2x1,1x1 --count 8 --repeats 1
    python scripts/scaling_bench.py --configs 1x1,4x1 --count 64 --device cuda

Makes ``--count`` photos with masks (scikit-image's bundled photos, resized), then times
whole ``moebius inpaint --images`` commands, start-up and model loading included, as a user
would run them, for each ``--configs`` entry PxT: P processes (under ``torchrun`` when P > 1)
of T threads each. Runs are interleaved (A B A B …) so that load from other programs hits
all alike; the load average before and after is recorded. Writes scaling.json (every run,
medians, each configuration's speed relative to the first) and prints a table.
"""

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine()
    return next(
        (line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line),
        platform.machine(),
    )


def _make_inputs(folder: Path, count: int, width: int, height: int) -> tuple[Path, Path]:
    import numpy as np
    from PIL import Image
    from skimage import data

    photos = (data.coffee, data.astronaut, data.chelsea, data.rocket, data.camera)
    images, masks = folder / "images", folder / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    for i in range(count):
        photo = Image.fromarray(photos[i % len(photos)]()).convert("RGB").resize((width, height))
        photo.save(images / f"{i:04d}.png")
        mask = np.zeros((height, width), np.uint8)
        top, left = (i * 37) % (height // 2), (i * 53) % (width // 2)
        mask[top : top + height // 3, left : left + width // 3] = 255
        Image.fromarray(mask).save(masks / f"{i:04d}.png")
    return images, masks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(processes: int, threads: int, argv: list[str]) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "moebius.cli", *argv, "--threads", str(threads)]
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
        "-m", "moebius.cli", *argv, "--threads", str(threads),
    ]  # fmt: skip


def _outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.glob("*.png")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--configs",
        help="comma-separated PROCESSESxTHREADS, the first is the baseline "
        "(default: 1 process with every core, then 2 processes splitting them)",
    )
    parser.add_argument("--count", type=int, default=16, help="photos to inpaint")
    parser.add_argument("--size", default="512x384", help="photo size WIDTHxHEIGHT")
    parser.add_argument("--model", default="moebius-demo", help="as moebius inpaint --model")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cores", type=int, help="threads in all (default: the usable cores)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("scaling-bench"))
    args = parser.parse_args()

    from moebius.runtime import available_cores

    cores = args.cores or available_cores()
    width, height = (int(v) for v in args.size.lower().split("x"))
    text = args.configs or f"1x{cores},2x{max(1, cores // 2)}"
    configs = [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",")]
    work = Path(tempfile.mkdtemp(prefix="scaling-bench-"))
    images, masks = _make_inputs(work, args.count, width, height)
    env = dict(os.environ, OMP_NUM_THREADS="1")  # --threads decides
    runs: dict[str, list[float]] = {}
    folders: dict[str, Path] = {}
    commands = {}
    load_before = os.getloadavg()
    for repeat in range(args.repeats):
        for processes, threads in configs:
            key = f"{processes}x{threads}"
            out = folders[key] = work / f"out-{key}"
            shutil.rmtree(out, ignore_errors=True)
            argv = ["inpaint", "--images", str(images), "--masks", str(masks), "--out",
                    str(out), "--model", args.model, "--batch-size", str(args.batch_size),
                    "--device", args.device, "-q"]  # fmt: skip
            command = _command(processes, threads, argv)
            start = time.perf_counter()
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            if done.returncode != 0 or f"{args.count} written" not in done.stdout:
                print(done.stdout, done.stderr[-3000:], file=sys.stderr)
                return 1
            runs.setdefault(key, []).append(seconds)
            commands[key] = " ".join(command).replace(str(work), "$WORK")
            print(f"repeat {repeat}: {key}: {seconds:.1f} s", file=sys.stderr)
    load_after = os.getloadavg()
    first = _outputs(next(iter(folders.values())))
    rates = {key: args.count / statistics.median(seconds) for key, seconds in runs.items()}
    baseline = next(iter(rates.values()))
    report = {
        "machine": _machine(),
        "cores": cores,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "count": args.count,
        "size": [width, height],
        "model": args.model,
        "batch_size": args.batch_size,
        "device": args.device,
        "commands": commands,
        "seconds": runs,
        "items_per_second": rates,
        "speed_relative_to_first": {key: rate / baseline for key, rate in rates.items()},
        "same_bytes_as_first": {key: _outputs(out) == first for key, out in folders.items()},
        "timed": "whole commands: interpreter start, model load, inpainting, writing",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaling.json").write_text(json.dumps(report, indent=2) + "\n")
    shutil.rmtree(work)
    print(f"{report['machine']}, {cores} cores, load average {load_before[0]:.2f} before")
    for key, rate in rates.items():
        same = report["same_bytes_as_first"][key]
        print(f"  {key} (processes x threads): {rate:.3f} items/s, x{rate / baseline:.2f}, "
              f"same bytes as the first: {same}")  # fmt: skip
    print(f"  medians of {args.repeats}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
