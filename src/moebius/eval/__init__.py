"""Benchmark protocols and metrics (``moebius eval``): FID, LPIPS, U-IDS/P-IDS, PSNR/SSIM.

Submodules import torch lazily where they can; import what you need::

    from moebius.eval.runner import EvalConfig, evaluate
    from moebius.eval.fid import fid_from_features
"""

from moebius.eval.protocols import ALL_METRICS, PROTOCOLS, Protocol, get_protocol

__all__ = ["ALL_METRICS", "PROTOCOLS", "Protocol", "get_protocol"]
