"""moebius: fast, lightweight diffusion image inpainting (Moebius, arXiv 2606.19195).

Heavy optional dependencies (diffusers, the pipeline, the trainer) are imported
lazily, so ``import moebius`` stays cheap.
"""

from moebius.errors import CheckpointError, ConfigError, InputError, MoebiusError
from moebius.models import (
    LCGModel,
    ModelOutput,
    build_model,
    category_ids,
    from_pretrained,
    load_model,
    read_state_dict,
    save_pretrained,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "InputError",
    "LCGModel",
    "ModelOutput",
    "MoebiusError",
    "build_model",
    "category_ids",
    "from_pretrained",
    "load_model",
    "read_state_dict",
    "save_pretrained",
]
