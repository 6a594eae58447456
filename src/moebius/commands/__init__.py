"""Sub-commands of the ``moebius`` CLI, one module each."""

from moebius.errors import InputError


def resolve_device(name: str):
    """``auto`` → CUDA, else Apple MPS, else CPU; an unavailable device is an InputError."""
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
        raise InputError(
            f"unknown --device {name!r} (use auto, cpu, cuda, cuda:N or mps)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: no CUDA GPU is available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"--device {name}: Apple MPS is not available")
    return device
