"""Facts about the CPU that decide kernels and precision: its model name and its instruction
set extensions (Linux reports them in /proc/cpuinfo)."""

import functools
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# Instruction set extensions that compute with bfloat16 natively: AVX-512 BF16 (dot products of
# bfloat16 pairs) and AMX (bfloat16 tile matrix products) on x86, and Arm's BF16 extension.
NATIVE_BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


@functools.cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's ``key: value`` lines of /proc/cpuinfo (empty off Linux)."""
    fields: dict[str, str] = {}
    try:
        text = CPUINFO.read_text()
    except OSError:
        return fields
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_model() -> str:
    """The CPU's marketing name, e.g. ``AMD EPYC 9R14``; the platform's processor otherwise."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine() or "cpu"


def cpu_flags() -> frozenset[str]:
    """Instruction set extensions (``flags`` on x86, ``Features`` on Arm)."""
    info = _cpuinfo()
    return frozenset((info.get("flags") or info.get("Features") or "").split())


def native_bfloat16() -> bool:
    """Whether the CPU computes bfloat16 products natively rather than by conversion."""
    return bool(cpu_flags() & set(NATIVE_BFLOAT16_FLAGS))
