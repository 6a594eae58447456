"""Gated Linear Attention (Yang et al. 2023): the recurrence, and a chunked form of it.

Per batch item and head, with a per-key-channel log forget gate ``g_t <= 0``::

    S_t = Diag(exp(g_t)) S_{t-1} + k_t^T v_t        S_0 = 0, S_t of shape (d_k, d_v)
    o_t = (scale · q_t) S_t

Tensors are head-first: q, k, g (B, H, T, d_k); v (B, H, T, d_v); output (B, H, T, d_v).
The recurrence is the oracle; the chunked form computes the same sum block-parallel
with every exponent it evaluates ≤ 0, so no gate value can overflow it.
"""

import torch
import torch.nn.functional as F


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
    sub_chunk_size: int = 16,
) -> torch.Tensor:
    """The recurrence computed chunk by chunk (the GLA paper's two-level chunking).

    Inside a chunk, ``b_t`` is the inclusive cumulative log gate and the weight of key s
    in query t is ``q_t · k_s exp(b_t - b_s)`` (s ≤ t). Splitting that exponent across
    ``q`` and ``k`` turns it into a matmul but may overflow, so the split is always taken
    at a point between s and t: the state at a chunk boundary carries earlier chunks,
    sub-chunk boundaries serve earlier sub-chunks of the same chunk, and only pairs inside
    one sub-chunk are evaluated elementwise. Lower precisions are computed in float32.
    """
    dtype = q.dtype
    work = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    q, k, v, g = (x.to(work) for x in (q, k, v, g))
    b, h, t, dk = q.shape
    dv = v.shape[-1]
    size = min(chunk_size, -(-t // sub_chunk_size) * sub_chunk_size)
    sub = min(sub_chunk_size, size)
    if size % sub:
        raise ValueError(f"chunk_size {chunk_size} is not a multiple of {sub_chunk_size}")
    pad = -t % size
    if pad:  # trailing zeros (no decay, no content) cannot reach earlier tokens
        q, k, v, g = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v, g))
    n, m = (t + pad) // size, size // sub
    q = (scale * q).reshape(b, h, n, size, dk)
    k = k.reshape(b, h, n, size, dk)
    v = v.reshape(b, h, n, size, dv)
    cum = g.reshape(b, h, n, size, dk).cumsum(dim=3)
    total = cum[:, :, :, -1:]  # the decay of a whole chunk

    # Earlier chunks, through the state entering each chunk.
    chunk_states = (k * (total - cum).exp()).transpose(-1, -2) @ v  # (b, h, n, dk, dv)
    states = [q.new_zeros(b, h, dk, dv)]
    for c in range(n - 1):
        states.append(states[-1] * total[:, :, c, 0, :, None].exp() + chunk_states[:, :, c])
    entering = torch.stack(states, dim=2)
    out = (q * cum.exp()) @ entering

    # Earlier sub-chunks of the same chunk, split at the query sub-chunk's start ``r``.
    cum_sub = cum.reshape(b, h, n, m, sub, dk)
    start = torch.cat(
        [torch.zeros_like(cum_sub[:, :, :, :1, :1]), cum_sub[:, :, :, :-1, -1:]], dim=3
    )  # (b, h, n, m, 1, dk): cumulative gate just before each sub-chunk
    q_sub = q.reshape(b, h, n, m, sub, dk) * (cum_sub - start).exp()
    earlier = torch.arange(size, device=q.device) // sub < torch.arange(m, device=q.device)[:, None]
    # Keys at or after the query sub-chunk would get a positive exponent: weight 0 instead.
    k_split = (start - cum[:, :, :, None]).masked_fill(~earlier[:, :, None], -torch.inf)
    scores = q_sub @ (k[:, :, :, None] * k_split.exp()).transpose(-1, -2)  # (.., m, sub, size)
    out = out.reshape(b, h, n, m, sub, dv) + scores @ v[:, :, :, None]

    # Pairs inside one sub-chunk, elementwise: exponent b_t - b_s ≤ 0 for s ≤ t.
    causal = torch.ones(sub, sub, dtype=torch.bool, device=q.device).tril()
    pair = (cum_sub[..., :, None, :] - cum_sub[..., None, :, :]).masked_fill(
        ~causal[:, :, None], -torch.inf
    )  # (b, h, n, m, t, s, dk)
    k_pair = k.reshape(b, h, n, m, 1, sub, dk) * pair.exp()
    scores = q.reshape(b, h, n, m, sub, 1, dk) @ k_pair.transpose(-1, -2)
    out = out + scores.squeeze(-2) @ v.reshape(b, h, n, m, sub, dv)
    return out.reshape(b, h, n * size, dv)[:, :, :t].to(dtype)
