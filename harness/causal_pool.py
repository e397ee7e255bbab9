"""Causal pooling over positions, for families that summarise the sequence (memory slots, resonance buffers).

A mean over the whole sequence lets position t see later tokens. These are the two causal forms: a running
quantity over tokens 0..t (a cumulative sum), or a quantity over the chunks before t's chunk only. All work on
(batch, seq, ...) tensors with static shapes and no loop over positions; sums are taken in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _per_position(values: Tensor, ndim: int) -> Tensor:
    """A (seq,) tensor shaped to broadcast against a (batch, seq, ...) tensor of `ndim` dimensions."""
    return values.view(1, -1, *([1] * (ndim - 2)))


def running_sum(x: Tensor) -> Tensor:
    """out[:, t] = Σ_{s ≤ t} x[:, s], in fp32."""
    return x.float().cumsum(dim=1)


def running_mean(x: Tensor) -> Tensor:
    """out[:, t] = the mean of x[:, 0..t], in fp32."""
    count = torch.arange(1, x.size(1) + 1, device=x.device, dtype=torch.float32)
    return running_sum(x) / _per_position(count, x.dim())


def num_chunks(seq_len: int, chunk_len: int) -> int:
    return -(-seq_len // chunk_len)


def to_chunks(x: Tensor, chunk_len: int) -> Tensor:
    """(B, T, ...) → (B, n, chunk_len, ...), the last chunk zero-padded."""
    bsz, seq_len = x.shape[:2]
    n = num_chunks(seq_len, chunk_len)
    pad = [0, 0] * (x.dim() - 2) + [0, n * chunk_len - seq_len]
    return F.pad(x, pad).view(bsz, n, chunk_len, *x.shape[2:])


def to_positions(per_chunk: Tensor, chunk_len: int, seq_len: int) -> Tensor:
    """(B, n, ...) → (B, seq_len, ...): each position gets its chunk's value."""
    bsz, n = per_chunk.shape[:2]
    rest = per_chunk.shape[2:]
    spread = per_chunk.unsqueeze(2).expand(bsz, n, chunk_len, *rest)
    return spread.reshape(bsz, n * chunk_len, *rest)[:, :seq_len]


def previous_chunks(chunk_totals: Tensor) -> Tensor:
    """(B, n, ...) per-chunk totals → (B, n, ...): for chunk c, the total of chunks 0..c−1 (zero for chunk 0).
    Exact: the totals are shifted, not subtracted, so no rounding carries chunk c into its own value. The last
    chunk reaches no position; it is added times zero so that whatever wrote only there stays in the autograd
    graph (DDP needs every parameter in it on every step, even when a sequence is a single chunk)."""
    shifted = F.pad(chunk_totals, [0, 0] * (chunk_totals.dim() - 2) + [1, 0])[:, :-1]
    return shifted.cumsum(dim=1) + 0.0 * chunk_totals[:, -1:]


def previous_chunks_mean(x: Tensor, chunk_len: int) -> Tensor:
    """(B, T, ...) → (B, n, ...): for chunk c, the fp32 mean of x over chunks 0..c−1 (zero for chunk 0)."""
    totals = to_chunks(x.float(), chunk_len).sum(dim=2)
    count = torch.arange(totals.size(1), device=x.device, dtype=torch.float32) * chunk_len  # earlier chunks are full
    return previous_chunks(totals) / _per_position(count.clamp(min=1), totals.dim())
