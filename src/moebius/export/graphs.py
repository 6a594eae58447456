"""The three networks of an inpainting as exportable modules, and their tracing into ONNX.

* ``denoiser``: one noise prediction of the student, BatchNorm folded, λ layers in their export
  forms (:mod:`moebius.nn.export_forms`), the LCG tokens of both categories resolved into a
  constant table: ``sample`` (B, 9, h, w) = latents, latent mask, masked-image latents (the
  layout the model is trained on), ``timestep`` (1 or B,) int64, ``category`` (B,) int64
  (0 background, 1 foreground) → ``noise`` (B, 4, h, w). The timestep's sinusoidal features
  come from a constant table of every training timestep, so runtimes that compute in a lower
  precision never round the angles.
* ``vae_encoder``: ``pixels`` (B, 3, H, W) in [−1, 1] → the posterior's ``mean`` and ``std``
  (unscaled), so that sampling happens outside with the runtime's random numbers.
* ``vae_decoder``: ``latents`` (B, 4, h, w), unscaled → ``pixels`` (B, 3, H, W) in about [−1, 1].

Batch and spatial sides are dynamic in every graph; sides must be multiples of the pipeline's
``pixel_multiple`` (latent sides of the VAE factor), as for the PyTorch pipeline.
"""

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from moebius.export.manifest import CATEGORIES
from moebius.models.registry import vae_scale_factor
from moebius.nn.fusion import set_export

OPSET = 18


@dataclass(frozen=True)
class GraphSpec:
    """How one network is traced: its module, example inputs and named, dynamic axes."""

    name: str
    module: nn.Module
    example: tuple[torch.Tensor, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]


class Denoiser(nn.Module):
    """The student behind ``(sample, timestep, category) → noise``; see the module docstring."""

    def __init__(self, model: nn.Module, num_train_timesteps: int):
        super().__init__()
        if not getattr(model, "fused", False):
            raise ValueError("fold the BatchNorms first: model.eval().fuse()")
        self.unet = model.diff_model
        self.unet.time_embedding.tabulate(num_train_timesteps)
        ids = torch.tensor([c.token_ids for c in CATEGORIES])
        with torch.no_grad():
            self.register_buffer("contexts", model.embedding_layer(ids).detach().clone())

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, category: torch.Tensor
    ) -> torch.Tensor:
        context = self.contexts[category].to(sample.dtype)
        return self.unet(sample, timestep, context).sample


class VaeEncoder(nn.Module):
    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(pixels).latent_dist
        return posterior.mean, posterior.std


class VaeDecoder(nn.Module):
    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents).sample


def graph_specs(
    model: nn.Module, vae: nn.Module, pixel_multiple: int, num_train_timesteps: int
) -> list[GraphSpec]:
    """The three graphs of a (fused) model and its VAE. They are traced at batch 2 and the
    smallest square side the model takes, twice ``pixel_multiple`` pixels: the graphs keep
    both dynamic, so the size only sets how long tracing takes."""
    height = width = 2 * pixel_multiple
    factor = vae_scale_factor(vae)
    latent = (height // factor, width // factor)
    channels = vae.config.latent_channels
    dtype = next(model.parameters()).dtype
    vae_dtype = next(vae.parameters()).dtype
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, model.config.in_channels, *latent, generator=generator).to(dtype)
    images = {0: "batch", 2: "height", 3: "width"}
    latents = {0: "batch", 2: "latent_height", 3: "latent_width"}
    return [
        GraphSpec(
            "denoiser",
            Denoiser(model, num_train_timesteps),
            (sample, torch.tensor([500]), torch.tensor([1, 0])),
            ("sample", "timestep", "category"),
            ("noise",),
            {"sample": latents, "timestep": {0: "timesteps"}, "category": {0: "batch"}},
        ),
        GraphSpec(
            "vae_encoder",
            VaeEncoder(vae),
            (torch.rand(2, 3, height, width, generator=generator).to(vae_dtype) * 2 - 1,),
            ("pixels",),
            ("mean", "std"),
            {"pixels": images, "mean": latents, "std": latents},
        ),
        GraphSpec(
            "vae_decoder",
            VaeDecoder(vae),
            (torch.randn(2, channels, *latent, generator=generator).to(vae_dtype),),
            ("latents",),
            ("pixels",),
            {"latents": latents, "pixels": images},
        ),
    ]


def to_onnx(spec: GraphSpec, path: Path) -> None:
    """Trace ``spec`` into an ONNX file, its modules in their export forms for the time
    (TorchScript tracing: several times faster than the torch.export route for this network,
    and it keeps the sizes dynamic)."""
    threads = torch.get_num_threads()
    # Tracing runs the network once on a tiny input: more threads only add hand-offs.
    torch.set_num_threads(1)
    set_export(spec.module, True)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # the tracer's advice on Python values and the legacy exporter's deprecation notice
            warnings.simplefilter("ignore")
            torch.onnx.export(
                spec.module.eval(),
                spec.example,
                str(path),
                input_names=list(spec.inputs),
                output_names=list(spec.outputs),
                dynamic_axes=spec.dynamic_axes,
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
    finally:
        set_export(spec.module, False)
        torch.set_num_threads(threads)
