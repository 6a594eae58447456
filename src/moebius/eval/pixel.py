"""PSNR and SSIM on uint8 images, whole-image and restricted to the hole.

SSIM follows Wang et al. (2004) as scikit-image's ``structural_similarity`` computes it with
``gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255`` (11×11 window,
per-channel mean over the valid region, i.e. no padded borders). ``window="uniform"`` gives
scikit-image's default 7×7 box window with sample covariance instead. The masked variant averages
the SSIM map over window centres inside the hole; masked PSNR uses the hole pixels' MSE.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

K1, K2, SIGMA = 0.01, 0.03, 1.5


def _to_tensor(image: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(H, W, C) or (H, W) → float64 (C, 1, H, W) for per-channel filtering."""
    t = torch.from_numpy(np.asarray(image, dtype=np.float64)).to(device)
    if t.ndim == 2:
        t = t[..., None]
    return t.permute(2, 0, 1)[:, None]


def psnr(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR in dB for uint8 images; ``mask`` (H, W), nonzero = hole, restricts the MSE to it."""
    diff = (np.asarray(pred, np.float64) - np.asarray(target, np.float64)) ** 2
    if mask is not None:
        hole = np.asarray(mask) > 0
        if not hole.any():
            return math.nan
        diff = diff[hole]
    mse = float(diff.mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _window(kind: str) -> tuple[torch.Tensor, float]:
    """1-D taps of the separable window and the covariance normalisation."""
    if kind == "gaussian":
        radius = int(3.5 * SIGMA + 0.5)  # scipy's truncate=3.5, as scikit-image
        x = torch.arange(-radius, radius + 1, dtype=torch.float64)
        g = torch.exp(-(x**2) / (2 * SIGMA**2))
        return g / g.sum(), 1.0
    if kind == "uniform":
        n = 7
        return torch.full((n,), 1.0 / n, dtype=torch.float64), n**2 / (n**2 - 1)
    raise ValueError("window must be 'gaussian' or 'uniform'")


def ssim_map(
    pred: np.ndarray,
    target: np.ndarray,
    window: str = "gaussian",
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Per-channel SSIM map over valid window positions: (C, H − k + 1, W − k + 1), float64."""
    taps, cov_norm = _window(window)
    taps = taps.to(device)
    x, y = _to_tensor(pred, device), _to_tensor(target, device)
    channels = x.shape[0]
    # all five local moments in one separable (rows, then columns) valid convolution
    stack = torch.cat([x, y, x * x, y * y, x * y])
    local = F.conv2d(F.conv2d(stack, taps.view(1, 1, 1, -1)), taps.view(1, 1, -1, 1))
    mu_x, mu_y, xx, yy, xy = local.split(channels)
    var_x = cov_norm * (xx - mu_x**2)
    var_y = cov_norm * (yy - mu_y**2)
    cov = cov_norm * (xy - mu_x * mu_y)
    c1, c2 = (K1 * 255.0) ** 2, (K2 * 255.0) ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return (num / den)[:, 0]


def ssim_from_map(smap: torch.Tensor, mask: np.ndarray | None = None) -> float:
    """Mean of an SSIM map; with ``mask`` (H, W, nonzero = hole) only over hole-centred windows."""
    if mask is None:
        return float(smap.mean())
    pad = (smap.shape[-2] - np.asarray(mask).shape[0]) // -2  # the border the window cannot reach
    hole = torch.from_numpy(np.asarray(mask) > 0)[pad:-pad, pad:-pad].to(smap.device)
    if not hole.any():
        return math.nan
    return float(smap[:, hole].mean())


def ssim(
    pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None, window: str = "gaussian"
) -> float:
    """Mean SSIM for uint8 images; with ``mask`` (H, W, nonzero = hole) only hole-centred windows."""
    return ssim_from_map(ssim_map(pred, target, window), mask)
