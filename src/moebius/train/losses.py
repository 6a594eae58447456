"""The paper's distillation objective: task, fine KD, coarse KD and latent perceptual
losses, combined with the authors' gradient-norm adaptive weights.

    L = 0.01·L_C + w_C · (0.5·L_task + 0.01·w_F·L_F + 0.5·w_P·L_P)

    w_F = ‖∇_o L_task‖ / (‖∇_o L_F‖ + 1e-6)     clamped to [0, 1e6]
    w_P = ‖∇_o L_task‖ / (‖∇_o L_P‖ + 1e-6)     clamped to [0, 1e6]
    w_C = ‖∇_f L_C‖    / (‖∇_f L_task‖ + 1e-4)  clamped to [0, 1e4]

``o`` is the weight of the student's last 1×1 conv (``diff_model.conv_out.conv_pw.weight``),
``f`` the ``proj_out`` weight of the last transformer of the deepest down level. The two
clamps pair with the two epsilons (1e-6 → 1e6, 1e-4 → 1e4). The weights are recomputed
every step with ``torch.autograd.grad(retain_graph=True)`` and detached: they scale the
losses, they are not optimised.
"""

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

W_FINE_MAX, W_PERC_MAX, W_COARSE_MAX = 1e6, 1e6, 1e4


def lognorm_timesteps(z: torch.Tensor, steps: int) -> torch.Tensor:
    """The authors' "lognorm_t": t = floor(steps·sigmoid(z)), z ~ N(0, 1), kept ≤ steps − 1."""
    return torch.floor(steps * torch.sigmoid(z.double())).long().clamp(0, steps - 1)


def uniform_timesteps(z: torch.Tensor, steps: int) -> torch.Tensor:
    """t uniform on 0 … steps − 1 from the same normal draw (t = floor(steps·Φ(z))).

    lognorm_t puts 0.2 % of samples below t = 50 and 1.4 % below t = 100: fine when fine-tuning
    a model that already denoises there, but a model trained from scratch for a short while
    never learns the last steps of a sampler, and its samples end in unremoved noise."""
    return torch.floor(steps * torch.special.ndtr(z.double())).long().clamp(0, steps - 1)


TIMESTEP_SAMPLERS = {"lognorm": lognorm_timesteps, "uniform": uniform_timesteps}


def full_precision(x: torch.Tensor) -> torch.Tensor:
    """float32, or float64 when the run is in float64 (numerical checks)."""
    return x if x.dtype == torch.float64 else x.float()


class FeatureAdapter(nn.Module):
    """1×1 conv from the student's coarse-KD feature width to the teacher's (trained with the
    student); identity when the widths already agree, as for Moebius ← PixelHacker."""

    def __init__(self, student_channels: int, teacher_channels: int):
        super().__init__()
        self.proj = (
            nn.Identity()
            if student_channels == teacher_channels
            else nn.Conv2d(student_channels, teacher_channels, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class MultiScaleLatentDistance(nn.Module):
    """Fallback perceptual distance when E-LatentLPIPS is unavailable: L1 between the latents
    and between their horizontal/vertical finite differences (edges), averaged over a 2×
    average-pool pyramid. Parameter-free and not learned — a structural surrogate, not LPIPS."""

    def __init__(self, scales: int = 3):
        super().__init__()
        self.scales = scales

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        total = a.new_zeros(())
        for s in range(self.scales):
            if s:
                if min(a.shape[-2:]) < 2:
                    break
                a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
            d = a - b
            total = total + d.abs().mean()
            total = total + (d[..., :, 1:] - d[..., :, :-1]).abs().mean()
            total = total + (d[..., 1:, :] - d[..., :-1, :]).abs().mean()
        return total / self.scales


class ELatentLPIPSDistance(nn.Module):
    """E-LatentLPIPS (Kang et al., Diffusion2GAN) via the ``elatentlpips`` package, SDXL
    latents. Construction fails when the package or its weights are not available locally."""

    def __init__(self, encoder: str = "sdxl"):
        super().__init__()
        from elatentlpips import ELatentLPIPS

        self.metric = ELatentLPIPS(encoder=encoder, augment=None).eval().requires_grad_(False)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.metric(a, b, normalize=True).mean()


def build_perceptual(kind: str) -> nn.Module | None:
    """``"none"`` → None; ``"multiscale"`` → the fallback; ``"elatentlpips"`` → E-LatentLPIPS
    or an error; ``"auto"`` → E-LatentLPIPS when it loads, else the fallback with a warning."""
    if kind == "none":
        return None
    if kind == "multiscale":
        return MultiScaleLatentDistance()
    if kind in ("elatentlpips", "auto"):
        try:
            return ELatentLPIPSDistance()
        except Exception as exc:  # missing package, missing weights, no network
            if kind == "elatentlpips":
                raise RuntimeError(f"E-LatentLPIPS is unavailable: {exc}") from exc
            warnings.warn(
                f"E-LatentLPIPS unavailable ({type(exc).__name__}); using the multi-scale "
                "latent distance instead (see docs/training.md)",
                stacklevel=2,
            )
            return MultiScaleLatentDistance()
    raise ValueError(f"unknown perceptual loss {kind!r}")


@dataclass
class LossTerms:
    task: torch.Tensor
    fine: torch.Tensor | None = None
    coarse: torch.Tensor | None = None
    perceptual: torch.Tensor | None = None


def loss_terms(
    student_eps: torch.Tensor,
    target: torch.Tensor,
    teacher_eps: torch.Tensor | None = None,
    student_feature: torch.Tensor | None = None,
    teacher_feature: torch.Tensor | None = None,
    x0_student: torch.Tensor | None = None,
    x0_true: torch.Tensor | None = None,
    perceptual: nn.Module | None = None,
) -> LossTerms:
    """The four losses in float32 (float64 runs stay float64); the optional ones are None
    when their inputs are. ``student_eps`` and ``teacher_eps`` are network outputs and
    ``target`` the task target, all of one prediction type (ε unless trained otherwise)."""
    student_eps = full_precision(student_eps)
    terms = LossTerms(task=F.mse_loss(student_eps, full_precision(target)))
    if teacher_eps is not None:
        terms.fine = F.mse_loss(student_eps, full_precision(teacher_eps))
    if student_feature is not None and teacher_feature is not None:
        if student_feature.shape != teacher_feature.shape:
            raise ValueError(
                f"coarse-KD features differ in shape: student {tuple(student_feature.shape)} "
                f"vs teacher {tuple(teacher_feature.shape)}; pick other block indices"
            )
        terms.coarse = F.mse_loss(full_precision(student_feature), full_precision(teacher_feature))
    if perceptual is not None and x0_student is not None:
        terms.perceptual = perceptual(full_precision(x0_student), full_precision(x0_true))
    return terms


def _norms(
    loss: torch.Tensor,
    params: list[torch.Tensor],
    reduce: Callable[[torch.Tensor], torch.Tensor] | None,
) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, params, retain_graph=True)
    if reduce is not None:  # DDP: the norm of the global-batch gradient, as one process sees it
        grads = [reduce(g) for g in grads]
    return [full_precision(g.detach()).norm() for g in grads]


def adaptive_weights(
    terms: LossTerms,
    output_param: torch.Tensor,
    feature_param: torch.Tensor,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """w_F, w_P, w_C from gradient norms (see the module docstring), detached and clamped.

    ``reduce`` averages a gradient over data-parallel ranks before its norm is taken.
    """
    weights = {}
    if terms.coarse is not None:  # one backward gives L_task's gradient at both parameters
        task_out, task_feat = _norms(terms.task, [output_param, feature_param], reduce)
        (coarse_feat,) = _norms(terms.coarse, [feature_param], reduce)
        weights["w_coarse"] = (coarse_feat / (task_feat + 1e-4)).clamp(0.0, W_COARSE_MAX)
    else:
        (task_out,) = _norms(terms.task, [output_param], reduce)
    if terms.fine is not None:
        (fine_out,) = _norms(terms.fine, [output_param], reduce)
        weights["w_fine"] = (task_out / (fine_out + 1e-6)).clamp(0.0, W_FINE_MAX)
    if terms.perceptual is not None:
        (perc_out,) = _norms(terms.perceptual, [output_param], reduce)
        weights["w_perc"] = (task_out / (perc_out + 1e-6)).clamp(0.0, W_PERC_MAX)
    return weights


def combine(terms: LossTerms, weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """L = 0.01·L_C + w_C·(0.5·L_task + 0.01·w_F·L_F + 0.5·w_P·L_P); L_task alone (the paper's
    no-KD ablation) when there is nothing else. Missing terms drop out of the formula."""
    if terms.fine is None and terms.coarse is None and terms.perceptual is None:
        return terms.task
    inner = 0.5 * terms.task
    if terms.fine is not None:
        inner = inner + 0.01 * weights["w_fine"] * terms.fine
    if terms.perceptual is not None:
        inner = inner + 0.5 * weights["w_perc"] * terms.perceptual
    if terms.coarse is None:
        return inner
    return 0.01 * terms.coarse + weights["w_coarse"] * inner
