"""moebius: fast, lightweight diffusion image inpainting (Moebius, arXiv 2606.19195).

Everything beyond the errors is imported on first use: the model API below needs PyTorch,
while the pipeline core and the exported-model runtime (:mod:`moebius.export`) do not, so
``import moebius`` stays cheap and works where PyTorch is not installed.
"""

from moebius.errors import CheckpointError, ConfigError, InputError, MoebiusError

__version__ = "0.1.0"

# name → the module that defines it (imported when the name is first used)
_LAZY = {
    "LCGModel": "moebius.models",
    "ModelOutput": "moebius.models",
    "build_model": "moebius.models",
    "category_ids": "moebius.models",
    "from_pretrained": "moebius.models",
    "load_model": "moebius.models",
    "read_state_dict": "moebius.models",
    "save_pretrained": "moebius.models",
}

__all__ = ["CheckpointError", "ConfigError", "InputError", "MoebiusError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'moebius' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
