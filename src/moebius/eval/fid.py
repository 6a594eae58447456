"""Fréchet Inception Distance between two feature sets.

    FID = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^{½} Σ₂ Σ₁^{½})^{½}

computed in float64 with symmetric eigendecompositions (no scipy ``sqrtm``, whose complex
round-off needs patching). With fewer samples than dimensions the cross term is the nuclear norm of
A₁A₂ᵀ (A = centred features), an N×N problem — exact, and what makes bootstrapping cheap.
"""

import torch


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) → mean (D,), unbiased covariance (D, D), both float64."""
    f = features.double()
    mu = f.mean(dim=0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    evals, evecs = torch.linalg.eigh(matrix)
    return (evecs * evals.clamp(min=0).sqrt()) @ evecs.T


def frechet_distance(
    mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor
) -> float:
    """Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂)."""
    mu1, sigma1, mu2, sigma2 = (t.double() for t in (mu1, sigma1, mu2, sigma2))
    root1 = _psd_sqrt(sigma1)
    cross = torch.linalg.eigvalsh(root1 @ sigma2 @ root1).clamp(min=0).sqrt().sum()
    value = (mu1 - mu2).pow(2).sum() + sigma1.trace() + sigma2.trace() - 2 * cross
    return float(value)


def fid_from_features(features1: torch.Tensor, features2: torch.Tensor) -> float:
    """FID between two sets of (N, D) features."""
    n1, n2, dim = features1.shape[0], features2.shape[0], features1.shape[1]
    if min(n1, n2) < 2:
        raise ValueError("FID needs at least two images per set")
    if min(n1, n2) >= dim:
        return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))
    a1 = features1.double() - features1.double().mean(0)
    a2 = features2.double() - features2.double().mean(0)
    # tr (Σ₁^{½} Σ₂ Σ₁^{½})^{½} = Σ σ(A₁A₂ᵀ) / √((N₁−1)(N₂−1)): eigenvalues of Σ₁Σ₂ are σ²/((N₁−1)(N₂−1))
    cross = torch.linalg.svdvals(a1 @ a2.T).sum() / ((n1 - 1) * (n2 - 1)) ** 0.5
    mean_term = (features1.double().mean(0) - features2.double().mean(0)).pow(2).sum()
    traces = a1.pow(2).sum() / (n1 - 1) + a2.pow(2).sum() / (n2 - 1)
    return float(mean_term + traces - 2 * cross)
