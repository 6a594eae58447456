"""Tiny components shared by the test modules (pytest puts this folder on sys.path)."""

import contextlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file

import moebius
from moebius.runtime import available_cores

FIXTURES = Path(__file__).parent / "fixtures"
TINY_YAML = FIXTURES / "moebius_tiny_a.yaml"


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """PyTorch's thread count inside the block: the suite runs tiny models on one thread
    (conftest), and a full-size model runs faster on every core this process may use."""
    saved = torch.get_num_threads()
    torch.set_num_threads(min(count, available_cores()))
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def tiny_model() -> moebius.LCGModel:
    """The authors' tiny student fixture, weights loaded, eval mode."""
    model = moebius.build_model(str(TINY_YAML))
    state = load_file(str(FIXTURES / "moebius_tiny_a.safetensors"))
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith("__")})
    return model.eval()


def tiny_vae(seed: int = 0, **overrides) -> AutoencoderKL:
    """A random f8, 4-channel AutoencoderKL with 8 channels per level."""
    torch.manual_seed(seed)
    settings = dict(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        latent_channels=4,
        sample_size=64,
        scaling_factor=0.13025,
    )
    return AutoencoderKL(**(settings | overrides)).eval()


def read_key_manifest(path: Path) -> dict[str, tuple[int, ...]]:
    """The authors' state-dict manifest (``key<TAB>[shape]<TAB>dtype`` rows) as key → shape."""
    manifest = {}
    for row in path.read_text().splitlines()[1:]:
        key, shape, _ = row.split("\t")
        manifest[key] = tuple(int(s) for s in shape.strip("[]").split(",") if s.strip())
    return manifest


def far_from(mask, scale: float = 1.0) -> np.ndarray:
    """Pixels the paste-back cannot touch: farther from the hole than its feathering reaches
    (a radius-3 Gaussian plus Lanczos resampling of the mask, 12 working pixels), where one
    working pixel is ``scale`` photo pixels."""
    hole = np.asarray(mask) >= 128
    distance = cv2.distanceTransform((~hole).astype(np.uint8), cv2.DIST_L2, 5)
    return distance > 12 * scale
