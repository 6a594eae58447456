"""Gated Linear Attention (Yang et al. 2023): the recurrence, and a chunked form of it.

Per batch item and head, with a per-key-channel log forget gate ``g_t <= 0``::

    S_t = Diag(exp(g_t)) S_{t-1} + k_t^T v_t        S_0 = 0, S_t of shape (d_k, d_v)
    o_t = (scale · q_t) S_t

Tensors are head-first: q, k, g (B, H, T, d_k); v (B, H, T, d_v); output (B, H, T, d_v).
:func:`gla_recurrent` is the oracle; :func:`gla_chunked` is the fast pure-PyTorch form;
:func:`gated_linear_attention` can use flash-linear-attention's kernels on CUDA instead.
"""

import functools
import inspect
import os

import torch
import torch.nn.functional as F

# Largest log decay one chunk may span: the split factors then stay within e^±60 ≈ 1e±26,
# far inside float32's normal range, for every product including the masked ones.
_MAX_CHUNK_DECAY = 60.0


def gla_recurrent(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, scale: float
) -> torch.Tensor:
    """The plain token-by-token scan (slow; the reference every other form must equal)."""
    b, h, _, dk = q.shape
    state = q.new_zeros(b, h, dk, v.shape[-1])
    outputs = []
    for t in range(q.shape[2]):
        state = state * g[:, :, t, :, None].exp() + k[:, :, t, :, None] * v[:, :, t, None, :]
        outputs.append((scale * q[:, :, t, None, :]) @ state)
    return torch.cat(outputs, dim=2)


def gla_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: float,
    chunk_size: int = 64,
) -> torch.Tensor:
    """The recurrence computed chunk by chunk: matmuls inside a chunk, a short scan across.

    With ``b_t`` the cumulative log gate inside a chunk, key s reaches query t (s ≤ t) with
    weight ``Σ_d q_t k_s exp(b_t - b_s)``. Splitting the exponent at the chunk's first token
    gives ``(q_t e^{b_t - b_0}) · (k_s e^{b_0 - b_s})``, one matmul per chunk that depends on
    no later token; earlier chunks arrive through the state entering the chunk. If a chunk
    decays by more than e^-60 (far beyond PixelHacker's gates: logit 0 keeps 0.96 per token)
    the split could leave the float range, so the chunk size is halved until it cannot.
    Half precisions run in float32.
    """
    dtype = q.dtype
    work = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    q, k, v, g = (x.to(work) for x in (q, k, v, g))
    b, h, t, dk = q.shape
    dv = v.shape[-1]
    size = min(chunk_size, t)
    pad = -t % size
    if pad:  # trailing zeros (no decay, no content) cannot reach earlier tokens
        q, k, v, g = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v, g))
    n = (t + pad) // size
    cum = g.reshape(b, h, n, size, dk).cumsum(dim=3)
    first, total = cum[:, :, :, :1], cum[:, :, :, -1:]  # total: decay of the whole chunk
    if (total - first).amin() < -_MAX_CHUNK_DECAY:  # never true once size is 1
        return gla_chunked(q[:, :, :t], k[:, :, :t], v[:, :, :t], g[:, :, :t], scale, size // 2)
    q = scale * q.reshape(b, h, n, size, dk)
    k = k.reshape(b, h, n, size, dk)
    v = v.reshape(b, h, n, size, dv)

    # Inside each chunk.
    q_decayed = q * (cum - first).exp()  # q_t e^{b_t - b_0}
    k_boosted = k * (first - cum).exp()  # k_s e^{b_0 - b_s}
    scores = q_decayed @ k_boosted.transpose(-1, -2)
    causal = torch.ones(size, size, dtype=torch.bool, device=q.device).tril()
    out = scores.masked_fill(~causal, 0.0) @ v

    # Earlier chunks, through the state S entering each chunk: k_s e^{b_L - b_s} builds it,
    # q_t e^{b_t} reads it (both factors ≤ 1, rebuilt from the split ones).
    chunk_states = (k_boosted * (total - first).exp()).transpose(-1, -2) @ v  # (b,h,n,dk,dv)
    decay = total.squeeze(3).exp().unsqueeze(-1)  # (b, h, n, dk, 1)
    states = [q.new_zeros(b, h, dk, dv)]
    for c in range(n - 1):
        states.append(states[-1] * decay[:, :, c] + chunk_states[:, :, c])
    out = out + (q_decayed * first.exp()) @ torch.stack(states, dim=2)
    return out.reshape(b, h, n * size, dv)[:, :, :t].to(dtype)


@functools.cache
def _fla_chunk_gla():
    """flash-linear-attention's ``chunk_gla`` and whether it takes ``head_first``, or None."""
    try:
        from fla.ops.gla import chunk_gla
    except Exception:  # absent, or present but unusable (no Triton, version clash)
        return None
    return chunk_gla, "head_first" in inspect.signature(chunk_gla).parameters


def gated_linear_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, scale: float
) -> torch.Tensor:
    """GLA for the model: :func:`gla_chunked` in the chunk size :mod:`moebius.nn.engines`
    timed fastest for the shape on this machine, or with ``MOEBIUS_GLA_KERNEL=fla`` set,
    flash-linear-attention's Triton ``chunk_gla`` for CUDA tensors when it is installed.

    fla is opt-in: its float32 products run in TF32 (≈1e-3 relative error on an H100, enough
    to move the tiny fixture's output by 0.07), and it made the whole teacher only ~10%
    faster there in bf16. Both paths read the same weights.
    """
    use_fla = q.is_cuda and os.environ.get("MOEBIUS_GLA_KERNEL", "torch") == "fla"
    fla = _fla_chunk_gla() if use_fla else None
    if fla is None:
        # engines → kernels → this module: imported here, once this module is whole
        from moebius.nn import engines
        from moebius.nn.kernels import LinearAttention

        return engines.gated_linear_attention(LinearAttention(q, k, v, g, scale))
    chunk_gla, takes_head_first = fla
    # Time-first (B, T, H, d) is the layout every fla release accepts.
    q, k, v, g = (x.transpose(1, 2).contiguous() for x in (q, k, v, g))
    extra = {"head_first": False} if takes_head_first else {}
    out, _ = chunk_gla(q, k, v, g, scale=scale, **extra)
    return out.transpose(1, 2)
