"""Where and in what precision the networks run: one set of rules and one set of command-line
options (``--device``, ``--dtype``, ``--threads``) for every command."""

import argparse
import contextlib
from dataclasses import dataclass

from moebius.errors import InputError

DEVICE_HELP = "auto (CUDA, else Apple MPS, else CPU), cpu, cuda, cuda:N or mps (default: auto)"
DTYPES = ("auto", "float32", "bfloat16", "float16")
DTYPE_HELP = (
    "weights' precision: auto (bfloat16 or float16 on GPUs; on the CPU bfloat16 where it "
    "computes it natively and measured faster, else float32), float32, bfloat16 or float16 "
    "(GPU only) (default: auto)"
)


def resolve_device(name: str = "auto"):
    """``auto`` → CUDA, else Apple MPS, else CPU; an unknown or unavailable device is an
    InputError."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"unsupported device {name!r} (use auto, cpu, cuda, cuda:N or mps)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {name}: no CUDA GPU is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(
                f"device {name}: only {torch.cuda.device_count()} CUDA GPU(s) (cuda:0 …)"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device {name}: Apple MPS is not available")
    return device


def resolve_dtype(name: str, device):
    """A dtype name (or ``auto``) → a torch dtype for ``device``.

    ``auto`` picks bfloat16 on GPUs that have it (its range cannot overflow where float16's
    can), float16 on other GPUs and on Apple MPS; on the CPU, bfloat16 where the CPU computes it
    natively (AVX-512 BF16, AMX, Arm BF16) and a typical product of the student measured clearly
    faster in it (:func:`moebius.nn.engines.prefers_bfloat16`, timed once per machine), float32
    otherwise. float16 is refused on the CPU: PyTorch runs much of it there through slow
    reference kernels.
    """
    import torch

    if name not in DTYPES:
        raise InputError(f"unknown dtype {name!r} (use {', '.join(DTYPES)})")
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "mps":
            return torch.float16
        from moebius.nn.engines import prefers_bfloat16

        return torch.bfloat16 if prefers_bfloat16() else torch.float32
    dtype = getattr(torch, name)
    if device.type == "cpu" and dtype == torch.float16:
        raise InputError("float16 needs a GPU; use float32 or bfloat16 on the CPU")
    return dtype


def bfloat16_conversion_note(
    device, dtype, advice: str = "--dtype auto runs float32 here"
) -> str | None:
    """The note, ending in ``advice``, for ``dtype`` bfloat16 on a CPU that converts it rather
    than computing it (an explicit ``--dtype bfloat16`` there: on an AVX2-only AMD EPYC one
    512 px step of the student took 27.6 s against 2.3 s in float32); None elsewhere."""
    import torch

    from moebius.cpu import native_bfloat16

    if device.type != "cpu" or dtype != torch.bfloat16 or native_bfloat16():
        return None
    return (
        "this CPU has no native bfloat16 (AVX-512 BF16, AMX or Arm BF16), so PyTorch computes "
        f"bfloat16 by conversion, many times slower than float32 ({advice})"
    )


def autocast(device, dtype):
    """The context reduced-precision weights run in: autocast, whose policy keeps the ops that
    need it (norms, softmax) in float32. The student's fast path steps out of it for bfloat16
    weights and keeps its own activations in bfloat16 (see moebius.models.moebius_unet). A
    no-op context for float32 and for devices autocast does not cover."""
    import torch

    if dtype == torch.float32 or device.type not in ("cpu", "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def synchronize(device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously), so clocks read true."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Runtime:
    """What ``--device``, ``--dtype`` and ``--threads`` resolved to."""

    device: object
    dtype: object
    threads: int | None = None


def add_runtime_args(parser: argparse.ArgumentParser, dtype: bool = True) -> None:
    """``--device``, ``--dtype`` (unless the command has its own precision options) and
    ``--threads``, identical in every command."""
    group = parser.add_argument_group("runtime")
    group.add_argument("--device", default="auto", help=DEVICE_HELP)
    if dtype:
        group.add_argument("--dtype", default="auto", choices=DTYPES, help=DTYPE_HELP)
    group.add_argument(
        "--threads",
        type=int,
        help="CPU threads for the networks (default: PyTorch's, usually one per core; under "
        "torchrun on the CPU, the machine's cores split evenly among its ranks)",
    )


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under taskset or Slurm)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def rank_device(device, local_rank: int):
    """The device of one rank of a multi-process job: ``cuda`` without an index becomes the
    rank's own GPU, ``cuda:LOCAL_RANK`` (modulo the GPUs this process sees, so one GPU per
    process via CUDA_VISIBLE_DEVICES works too); an explicit ``cuda:N`` is kept."""
    import torch

    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return device


def apply_runtime_args(args: argparse.Namespace, world=None) -> Runtime:
    """Resolve the runtime options, set the thread count, and on the CPU keep freed memory
    for reuse (see :func:`moebius.allocator.keep_freed_memory`).

    ``world`` (a :class:`moebius.distributed.World` of several processes): each rank takes its
    own GPU (:func:`rank_device`), or on the CPU an equal share of the cores unless
    ``--threads`` says otherwise (torchrun's OMP_NUM_THREADS=1 default would leave cores idle),
    and all take the precision rank 0 resolved ``--dtype`` to.

    A ``--backend`` other than ``torch`` (an exported model, see :mod:`moebius.loading`) runs
    on the CPU and is configured by its runtime, not PyTorch: the result then holds ``cpu``,
    the ``--dtype`` name and the thread count, and PyTorch is not imported.
    """
    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads must be at least 1, got {args.threads}")
    backend = getattr(args, "backend", "torch")
    if backend != "torch":
        if args.device not in ("auto", "cpu"):
            raise InputError(f"the {backend} backend runs on the CPU, not {args.device}")
        return Runtime(
            device="cpu",
            dtype=getattr(args, "dtype", "auto"),
            threads=_cpu_share(args.threads, world),
        )

    import torch

    from moebius.allocator import keep_freed_memory

    device = resolve_device(args.device)
    threads = args.threads
    if world is not None and world.size > 1:
        device = rank_device(device, world.local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
    if device.type == "cpu":
        threads = _cpu_share(threads, world)
    if threads:
        torch.set_num_threads(threads)  # first: ``auto`` measures with these threads
    name = getattr(args, "dtype", "float32")
    if name == "auto" and device.type == "cpu" and world is not None and world.size > 1:
        # One precision for the whole job: ``auto`` is timed here, and ranks time apart.
        dtype = world.run_on_main(lambda: resolve_dtype(name, device))
    else:
        dtype = resolve_dtype(name, device)
    if device.type == "cpu":
        keep_freed_memory()
    return Runtime(device=device, dtype=dtype, threads=threads)


def _cpu_share(threads: int | None, world) -> int | None:
    """``--threads``, else under a multi-process job this rank's equal share of the cores."""
    if threads is None and world is not None and world.size > 1:
        return max(1, available_cores() // world.local_size)
    return threads
