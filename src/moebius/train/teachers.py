"""Adapters that give other networks the LCG teacher call convention.

The trainer needs ``teacher(x (B, 9, h, w), t (B,), ids (B, 10)) -> ModelOutput(sample,
block_outputs)``. :class:`DiffusersUNetTeacher` wraps a diffusers ``UNet2DConditionModel``
(an inpainting UNet with 9 input channels and cross-attention): the ids go through an
embedding table to make the cross-attention context, and forward hooks collect the outputs
of every down block, the mid block and every up block, in that order, for coarse KD.
"""

from types import SimpleNamespace

import torch
from torch import nn

from moebius.models.outputs import ModelOutput


class DiffusersUNetTeacher(nn.Module):
    """``unet`` + ``embedding`` (ids → context tokens of ``unet.config.cross_attention_dim``,
    or of ``encoder_hid_dim`` when the UNet projects its context itself)."""

    def __init__(self, unet: nn.Module, embedding: nn.Embedding, model_type: str = "diffusers"):
        super().__init__()
        self.unet, self.embedding = unet, embedding
        self._config = SimpleNamespace(model_type=model_type)
        self._captured: list[torch.Tensor] = []
        blocks = [*unet.down_blocks, *([unet.mid_block] if unet.mid_block is not None else [])]
        for block in [*blocks, *unet.up_blocks]:
            block.register_forward_hook(self._capture)

    @property
    def config(self) -> SimpleNamespace:
        return self._config

    def _capture(self, module: nn.Module, args, output) -> None:
        # down blocks return (hidden states, residuals); mid and up blocks a tensor
        self._captured.append(output[0] if isinstance(output, tuple) else output)

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor | int, input_ids: torch.Tensor
    ) -> ModelOutput:
        context = self.embedding(input_ids).to(x.dtype)
        self._captured = []
        try:
            sample = self.unet(x, timesteps, encoder_hidden_states=context).sample
            return ModelOutput(sample=sample, block_outputs=self._captured)
        finally:
            self._captured = []
