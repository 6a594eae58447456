"""The models a benchmark compares, each wrapped as one denoising step on a latent batch.

* ``moebius-0.2b`` (or any student config path): the student, BatchNorm folded and on
  its fast path; its ``plain`` variant runs the formula-literal path, unfused.
* ``pixelhacker``: the teacher, when its preset builds.
* ``sd15-inpaint``: a Stable-Diffusion-1.5-inpainting-shaped diffusers
  ``UNet2DConditionModel`` (9 input channels, 768-d softmax cross-attention over
  77 tokens), random weights, its Linear layers on the same GEMM as ours: the paper's
  "SD" row.
* ``sd-tiny``: the same family at toy width, for tests.
"""

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from moebius.errors import InputError
from moebius.models.outputs import ModelOutput

SD15_INPAINT = dict(
    in_channels=9,
    out_channels=4,
    cross_attention_dim=768,
    attention_head_dim=8,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    sample_size=64,
)
SD_TINY = dict(SD15_INPAINT, cross_attention_dim=32, block_out_channels=(32, 64), norm_num_groups=8)
SD_TINY["down_block_types"] = ("CrossAttnDownBlock2D", "DownBlock2D")
SD_TINY["up_block_types"] = ("UpBlock2D", "CrossAttnUpBlock2D")
SD_TOKENS = 77


Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Subject:
    """One benchmarked network, with our models' calling convention ``module(x, t, ids)``;
    ``step(dtype)(x, t)`` runs one denoiser call on x (B, 9, h, w)."""

    name: str
    variant: str
    module: nn.Module | None
    params: int
    role: str  # "student", "teacher", "baseline" or "edge": what the headline ratios compare
    student_config: object = None  # set for students: enables the closed-form FLOP count
    # edge subjects: the student exported and run by another runtime (moebius.bench.edge)
    runtime: object = None  # an ExportedInpaintPipeline
    precision: str | None = None  # the runtime's compute precision
    exports: "Subject | None" = None  # the PyTorch subject it is an export of
    integer_products: bool = False  # its matrix products run in 8-bit integers
    _models: dict = field(default_factory=dict, repr=False)
    _steps: dict = field(default_factory=dict, repr=False)

    @property
    def label(self) -> str:
        return self.name if self.variant == "default" else f"{self.name} [{self.variant}]"

    def model(self, dtype: torch.dtype = torch.float32) -> nn.Module:
        """The network on weights stored in ``dtype``: for reduced precision a cast copy, made
        once, as ``moebius inpaint --dtype`` loads the model (run it under autocast)."""
        if dtype not in self._models:
            module = self.module
            if dtype != torch.float32:
                module = copy.deepcopy(module).to(dtype)
            self._models[dtype] = module
        return self._models[dtype]

    def step(self, dtype: torch.dtype = torch.float32) -> Step:
        if self.runtime is not None:  # the runtime's own precision
            return _exported_step(self.runtime)
        if dtype not in self._steps:
            self._steps[dtype] = _lcg_step(self.model(dtype))
        return self._steps[dtype]


def _lcg_step(model: nn.Module) -> Step:
    from moebius.models.lcg import category_ids

    def step(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # Batch 2 is the CFG pair (foreground, background), as in the sampler.
        half = x.shape[0] - x.shape[0] // 2
        ids = torch.cat(
            [
                category_ids("foreground", half, x.device),
                category_ids("background", x.shape[0] - half, x.device),
            ]
        )
        return model(x, t, ids).sample

    return step


def _exported_step(pipe) -> Step:
    """The same step on an exported denoiser: NumPy in and out of its runtime."""
    import numpy as np

    from moebius.export.manifest import category_index

    def step(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        half = x.shape[0] - x.shape[0] // 2
        ids = [category_index("foreground")] * half + [category_index("background")] * (
            x.shape[0] - half
        )
        categories = np.array(ids, dtype=np.int64)
        feeds = {"sample": x.numpy(), "timestep": t[:1].numpy(), "category": categories}
        return torch.from_numpy(pipe.engine.run("denoiser", feeds)[0])

    return step


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _sd(config: dict, device: torch.device) -> nn.Module:
    from diffusers import UNet2DConditionModel
    from diffusers.utils import logging as diffusers_logging

    from moebius.nn.adopt import adopt

    diffusers_logging.set_verbosity_error()  # its advice on casting is for pretrained weights

    # Our models' products run on the engines tuned for this machine (moebius.nn.engines); give
    # the baseline the same, so that its ratios compare architectures, not GEMM libraries.
    return adopt(UNet2DConditionModel(**config).eval().to(device))


class SDAsLCG(nn.Module):
    """The SD baseline behind our models' calling convention, so the same pipeline and step
    code run it: the category ids are ignored and the cross-attention context is 77 zero
    tokens, the size of a CLIP text encoding."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    @property
    def config(self):
        return self.unet.config

    def forward(self, x: torch.Tensor, t, input_ids: torch.Tensor) -> ModelOutput:
        width = self.unet.config.cross_attention_dim
        context = torch.zeros(x.shape[0], SD_TOKENS, width, device=x.device, dtype=x.dtype)
        return ModelOutput(self.unet(x, t, encoder_hidden_states=context).sample)


def build_subjects(name: str, device: torch.device, plain: bool) -> list[Subject]:
    """The subject(s) for a model name; students also get a plain variant when ``plain``."""
    import moebius
    from moebius.errors import MoebiusError
    from moebius.nn.fusion import set_plain

    if name in ("sd15-inpaint", "sd-tiny"):
        unet = SDAsLCG(_sd(SD15_INPAINT if name == "sd15-inpaint" else SD_TINY, device))
        return [Subject(name, "default", unet, _params(unet), "baseline")]
    try:
        model = moebius.build_model(name).eval()
    except MoebiusError as exc:
        raise InputError(f"cannot build model {name!r}: {exc}") from exc
    params = _params(model)  # before folding, which trades BatchNorm affines for conv biases
    subjects = []
    if model.config.model_type == "moebius":
        if plain:
            reference = set_plain(copy.deepcopy(model), True).to(device)
            subjects.append(Subject(name, "plain", reference, params, "student"))
        model.fuse()
    model.to(device)
    role = "student" if model.config.model_type == "moebius" else "teacher"
    subjects.insert(0, Subject(name, "default", model, params, role))
    if model.config.model_type == "moebius":
        for subject in subjects:
            subject.student_config = model.config
    return subjects
