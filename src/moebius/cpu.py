"""Facts about the CPU that decide kernels and precision: its model name and its instruction
set extensions (Linux reports them in /proc/cpuinfo)."""

import functools
import hashlib
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


# The vector and matrix extensions that decide which kernels are fastest, as people name them.
VECTOR_EXTENSIONS = (
    ("avx2", "AVX2"),
    ("avx512f", "AVX-512"),
    ("avx512_bf16", "AVX-512 BF16"),
    ("amx_bf16", "AMX"),
    ("asimd", "NEON"),
    ("sve", "SVE"),
    ("bf16", "Arm BF16"),
)


def vector_extensions() -> list[str]:
    """This CPU's extensions among :data:`VECTOR_EXTENSIONS`, e.g. ``["AVX2", "AVX-512",
    "AVX-512 BF16"]``."""
    flags = cpu_flags()
    return [name for flag, name in VECTOR_EXTENSIONS if flag in flags]


def cpu_signature() -> str:
    """Eight hex digits that tell CPUs apart by what decides kernel speed: vendor, family, model
    (or Arm's implementer and part) and extensions. One marketing name can cover several kinds:
    cloud VMs report "AMD EPYC" for AVX2-only and for AVX-512 BF16 parts alike."""
    info = _cpuinfo()
    identity = ("vendor_id", "cpu family", "model", "CPU implementer", "CPU part")
    text = "\n".join([*(info.get(key, "") for key in identity), *sorted(cpu_flags())])
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def cpu_generation() -> str | None:
    """Where in its vendor's line the CPU sits, e.g. ``family 25 model 17`` (x86) or
    ``implementer 0x41 part 0xd0c`` (Arm); None where the system does not say. Cloud VMs give
    several generations one marketing name ("AMD EPYC"), and their speeds differ by 2x."""
    info = _cpuinfo()
    if info.get("cpu family") and info.get("model"):
        return f"family {info['cpu family']} model {info['model']}"
    if info.get("CPU implementer") and info.get("CPU part"):
        return f"implementer {info['CPU implementer']} part {info['CPU part']}"
    return None


def cpu_facts() -> dict:
    """What reports record of the CPU they ran on (read back by :func:`describe_cpu`)."""
    return {
        "cpu": cpu_model(),
        "cpu_generation": cpu_generation(),
        "cpu_signature": cpu_signature(),
        "cpu_extensions": vector_extensions(),
        "native_bfloat16": native_bfloat16(),
    }


def same_cpu_kind(a: dict, b: dict) -> bool:
    """Whether two reports' machines (:func:`cpu_facts`) are the same kind of CPU; reports that
    predate :func:`cpu_signature` in them match none."""
    return a.get("cpu_signature") is not None and a.get("cpu_signature") == b.get("cpu_signature")


def describe_cpu(machine: dict) -> str:
    """A bench report's CPU as a reader needs it: the model, its generation where recorded and
    its widest extension, e.g. ``AMD EPYC family 25 model 17 with AVX-512 BF16`` or ``AMD EPYC
    with AVX2``. Reports that predate the extension list say whether the CPU had native
    bfloat16."""
    name = machine["cpu"]
    if machine.get("cpu_generation"):
        name += f" {machine['cpu_generation']}"
    extensions = machine.get("cpu_extensions")
    if extensions:
        return f"{name} with {extensions[-1]}"
    if machine.get("native_bfloat16"):
        return f"{name} with native bfloat16"
    return name
