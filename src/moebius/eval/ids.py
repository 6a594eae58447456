"""U-IDS and P-IDS (Zhao et al., CoModGAN 2021; reported by PixelHacker).

A linear SVM is fitted to separate real from inpainted Inception features. U-IDS is its
misclassification rate on those features (0.5 = indistinguishable); P-IDS is the fraction of pairs
(real, inpainted version of the same image) where the inpainted one scores as *more* real.

The SVM is scikit-learn's ``LinearSVC(dual=False)`` objective, solved here directly (primal,
squared hinge, C = 1, bias as an extra regularised feature of value 1, as liblinear does):

    min_w ½‖w‖² + C Σ_i max(0, 1 − y_i w·x̃_i)²,   x̃ = [x, 1], y ∈ {−1, +1}

by generalised Newton steps with backtracking; the objective is strictly convex, so the minimiser
(and both scores) are the ones liblinear converges to.
"""

import torch


def fit_linear_svm(
    x: torch.Tensor, y: torch.Tensor, c: float = 1.0, max_iter: int = 100, tol: float = 1e-6
) -> torch.Tensor:
    """x (N, D), y (N,) in {−1, +1} → weights (D + 1,), last entry the bias."""
    x = torch.cat([x.double(), torch.ones(x.shape[0], 1, dtype=torch.float64)], dim=1)
    y = y.double()
    w = torch.zeros(x.shape[1], dtype=torch.float64)

    def objective(w: torch.Tensor) -> torch.Tensor:
        return 0.5 * w @ w + c * (1 - y * (x @ w)).clamp(min=0).pow(2).sum()

    value = objective(w)
    for _ in range(max_iter):
        margin = 1 - y * (x @ w)
        active = margin > 0
        xa = x[active]
        grad = w - 2 * c * xa.T @ (y[active] * margin[active])
        if grad.norm() <= tol * max(1.0, float(value)):
            break
        # Newton step H⁻¹g, H = I + 2C XₐᵀXₐ; with fewer active rows than features solve the
        # smaller system via Woodbury: H⁻¹g = g − 2C Xₐᵀ (I + 2C XₐXₐᵀ)⁻¹ Xₐg
        if xa.shape[0] < x.shape[1]:
            small = torch.eye(xa.shape[0], dtype=torch.float64) + 2 * c * xa @ xa.T
            step = grad - 2 * c * xa.T @ torch.linalg.solve(small, xa @ grad)
        else:
            hessian = torch.eye(x.shape[1], dtype=torch.float64) + 2 * c * xa.T @ xa
            step = torch.linalg.solve(hessian, grad)
        t = 1.0
        while objective(w - t * step) > value - 1e-4 * t * (grad @ step):
            t *= 0.5
            if t < 1e-10:  # no descent left at float64 precision: we are at the minimum
                return w
        w = w - t * step
        value = objective(w)
    return w


def inception_discriminative_scores(real: torch.Tensor, fake: torch.Tensor) -> tuple[float, float]:
    """Paired (N, D) real and inpainted features → (U-IDS, P-IDS)."""
    if real.shape != fake.shape:
        raise ValueError("U-IDS/P-IDS need paired feature sets of the same shape")
    x = torch.cat([real, fake]).double()
    # standardising is a change of variables the SVM is not invariant to; liblinear sees raw
    # features in CoModGAN's code, so we do too
    y = torch.cat([torch.ones(len(real)), -torch.ones(len(fake))]).double()
    w = fit_linear_svm(x, y)

    def decision(f: torch.Tensor) -> torch.Tensor:
        return f.double() @ w[:-1] + w[-1]

    d_real, d_fake = decision(real), decision(fake)
    accuracy = torch.cat([d_real > 0, d_fake <= 0]).double().mean()
    u_ids = float(1 - accuracy)
    p_ids = float((d_fake > d_real).double().mean())
    return u_ids, p_ids
