"""Running ``moebius serve`` as a real process on the loopback address, for the tests that need
a real server (the load test, the browser test)."""

import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from PIL import Image

SRC = Path(__file__).resolve().parent.parent / "src"
START_TIMEOUT = 120  # seconds: imports and model loading on a busy 2-core machine
DEMO_QUEUE = 4  # the queue of the shared demo server (conftest.demo_server)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class Server:
    def __init__(self, process: subprocess.Popen, log: Path, url: str):
        self.process = process
        self.log = log
        self.url = url

    @property
    def output(self) -> str:
        return self.log.read_text()


@contextlib.contextmanager
def serve(tmp_path: Path, *args: str, env: dict | None = None):
    """``moebius serve --port 0 ARGS`` in a subprocess; yields a :class:`Server` once
    /readyz answers 200, and stops it with Ctrl+C (SIGINT) afterwards, which must end it
    cleanly."""
    log = tmp_path / "serve.log"
    environment = dict(os.environ, PYTHONPATH=str(SRC), **(env or {}))
    command = [sys.executable, "-m", "moebius.cli", "serve", "--port", "0", "--threads", "1", *args]
    with open(log, "w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=environment)
    try:
        url = _wait_ready(process, log)
        yield Server(process, log, url)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise AssertionError("moebius serve did not stop on SIGINT") from None


def _wait_ready(process: subprocess.Popen, log: Path) -> str:
    deadline = time.monotonic() + START_TIMEOUT
    url = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"moebius serve exited with {process.returncode}:\n{log.read_text()}"
            )
        if url is None:
            found = re.search(r"listening on (http://\S+)", log.read_text())
            url = found.group(1) if found else None
        if url is not None:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    return url
        time.sleep(0.2)
    raise AssertionError(f"moebius serve was not ready in {START_TIMEOUT} s:\n{log.read_text()}")
