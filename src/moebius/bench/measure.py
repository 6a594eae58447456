"""Timing, memory and roofline measurements on CPU or CUDA."""

import contextlib
import ctypes
import os
import statistics
import threading
import time
from pathlib import Path

import torch

from moebius.nn.onednn import linear


class Timer:
    """Wall time of a callable: CUDA events on GPU (after a synchronize), perf_counter on CPU."""

    def __init__(self, device: torch.device):
        self.device = device

    def __call__(self, fn) -> float:
        """Seconds one call of ``fn()`` takes."""
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(self.device)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start


def summarize(seconds: list[float]) -> dict:
    """Median and spread of repeated timings, in milliseconds."""
    ms = sorted(1000 * s for s in seconds)
    quartiles = statistics.quantiles(ms, n=4) if len(ms) > 1 else [ms[0]] * 3
    return {
        "median_ms": statistics.median(ms),
        "min_ms": ms[0],
        "max_ms": ms[-1],
        "iqr_ms": quartiles[2] - quartiles[0],
        "runs_ms": [round(t, 3) for t in ms],
    }


def _rss_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * _PAGE


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _trim_heap() -> None:
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_memory(fn, device: torch.device) -> int:
    """Extra bytes one call of ``fn()`` needs at its peak.

    CUDA: ``max_memory_allocated`` above what was allocated before. CPU: resident set
    size sampled every millisecond above the size before the call (after returning
    the allocator's free pages to the system, so reused heap is not hidden).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    _trim_heap()
    before = peak = _rss_bytes()
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return max(peak, _rss_bytes()) - before


def matmul_rooflines(
    device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 5
) -> dict[str, float]:
    """Matrix-product throughput in FLOP/s, the fastest of ``repeats`` size³ products, through
    ``@`` ("matmul") and through :func:`moebius.nn.onednn.linear` ("onednn"): on CPU in float32
    the two reach different GEMM libraries (MKL and oneDNN), and either may be the faster."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    timer = Timer(device)
    rates = {}
    with torch.inference_mode():
        for name, product in (("matmul", lambda: a @ b), ("onednn", lambda: linear(a, b))):
            timer(product)
            seconds = min(timer(product) for _ in range(repeats))  # best: the ceiling
            rates[name] = 2 * size**3 / seconds
    return rates
