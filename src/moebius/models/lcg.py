"""Latent Categories Guidance: the learned token table that replaces a text encoder."""

import torch
from torch import nn

from moebius.models.outputs import ModelOutput
from moebius.settings import Category


def category_ids(
    category: Category | str, batch_size: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(B, 10) LCG ids for "background" (fill with scene) or "foreground" (fill with an object)."""
    try:
        category = Category(category)
    except ValueError:
        raise ValueError(f"category must be background or foreground, got {category!r}") from None
    return torch.tensor(category.token_ids, device=device).expand(batch_size, -1)


class LCGModel(nn.Module):
    """``embedding_layer`` (category ids → context tokens) wrapped around a denoiser ``diff_model``.

    Calling convention shared by student and teacher:
    ``model(x (B, 9, h, w), timesteps (B,) or scalar, input_ids (B, tokens))`` → :class:`ModelOutput`.
    """

    def __init__(self, diff_model: nn.Module, num_categories: int, embed_dim: int):
        super().__init__()
        self.embedding_layer = nn.Embedding(num_categories, embed_dim)
        self.diff_model = diff_model

    @property
    def config(self):
        return self.diff_model.config

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor | int | float, input_ids: torch.Tensor
    ) -> ModelOutput:
        timesteps = torch.as_tensor(timesteps, device=x.device)
        if timesteps.dim() == 0:
            timesteps = timesteps.expand(x.shape[0])
        context = self.embedding_layer(input_ids).to(x.dtype)
        return self.diff_model(x, timesteps, context)

    def fuse(self) -> "LCGModel":
        """Fold every eval-mode BatchNorm into its preceding projection (inference only)."""
        if self.training:
            raise RuntimeError("fuse() folds running statistics; call model.eval() first")
        for module in list(self.modules()):
            if hasattr(module, "fuse_batchnorm"):
                module.fuse_batchnorm()
        self.fused = True
        return self
