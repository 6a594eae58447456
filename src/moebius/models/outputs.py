from dataclasses import dataclass, field

import torch


@dataclass
class ModelOutput:
    """The noise prediction and the per-level block outputs used for feature distillation."""

    sample: torch.Tensor
    block_outputs: list[torch.Tensor] = field(default_factory=list)
