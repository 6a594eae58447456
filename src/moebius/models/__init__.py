"""Networks (student, teacher), the LCG wrapper, configs and checkpoint I/O."""

from moebius.models.api import build_model, from_pretrained, load_model
from moebius.models.checkpoint import read_state_dict, save_pretrained
from moebius.models.lcg import LCGModel, category_ids
from moebius.models.outputs import ModelOutput

__all__ = [
    "LCGModel",
    "ModelOutput",
    "build_model",
    "category_ids",
    "from_pretrained",
    "load_model",
    "read_state_dict",
    "save_pretrained",
]
