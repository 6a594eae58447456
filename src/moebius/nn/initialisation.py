"""The authors' initialisation of both networks' linear layers."""

from torch import nn


def init_linear_layers(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every ``nn.Linear`` inside ``module``.

    Both of the authors' networks do this at the end of their constructors (convolutions,
    norms and embeddings keep PyTorch's defaults). It matters only for training from scratch:
    PyTorch's default draws weights about √3 times smaller (for square layers) and non-zero
    biases, which weakens the timestep and context signals a fresh network starts with.
    """
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
