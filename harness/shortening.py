"""Causal sequence shortening for the families whose middle layers run on a shorter sequence (hourglass, token_pooling).

Fixed groups (Hourglass, Nawrot et al. 2021, arXiv 2110.13711): shift right by k − 1, pool groups of k, upsample
by repeating; short position g then holds tokens gk − k + 1 .. gk and is read by tokens gk .. gk + k − 1, so no
token reads a later one. Dynamic segments (Nawrot et al. 2023, arXiv 2211.09761): a 0/1 boundary at t ends a
segment at t; segments are mean-pooled into a fixed-size buffer behind a null slot, and token t reads the slot of
the last segment that ended at or before t (the null slot before the first). All shapes are static.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.config import param
from harness.model import GPTConfig


@dataclass(frozen=True)
class ShortenedConfig(GPTConfig):
    """The baseline with its middle layers on a shortened sequence, the same number of full-resolution layers
    before and after them."""
    outer_layers: int = param(-1, "full-resolution layers before and after the shortened ones (-1: "
                              "(num_layers + 1) // 4, 2 of 9); at most (num_layers - 1) // 2 are used, so one "
                              "shortened layer remains at any depth", low=-1, high=128)

    def outer(self) -> int:
        """Capped rather than refused: the preflight's two-layer copy of a run keeps --outer-layers."""
        wanted = (self.num_layers + 1) // 4 if self.outer_layers < 0 else self.outer_layers
        return min(wanted, (self.num_layers - 1) // 2)


def pool_groups(x: Tensor, k: int, proj: nn.Module | None = None) -> Tensor:
    """(B, T, D) → (B, ceil(T/k), D): the mean of each group of k positions, or `proj` of their concatenation
    (linear pooling, proj: k·D → D). A last partial group is padded with zeros, which come after every real
    position and so carry nothing from the future."""
    bsz, seq_len, dim = x.shape
    groups = -(-seq_len // k)
    x = F.pad(x, (0, 0, 0, groups * k - seq_len))
    if proj is not None:
        return proj(x.reshape(bsz, groups, k * dim))
    return x.reshape(bsz, groups, k, dim).mean(dim=2)


def upsample_groups(short: Tensor, k: int, seq_len: int, proj: nn.Module | None = None) -> Tensor:
    """(B, G, D) → (B, seq_len, D): each short position repeated k times, or `proj` (D → k·D) giving each of the
    k positions of its group its own projection (linear upsampling)."""
    bsz, groups, dim = short.shape
    if proj is not None:
        full = proj(short).reshape(bsz, groups * k, dim)
    else:
        full = short.repeat_interleave(k, dim=1)
    return full[:, :seq_len]


def hourglass_shorten(x: Tensor, k: int, proj: nn.Module | None = None) -> Tensor:
    """The paper's causal shortening of (B, T, D): shift right by k − 1 (zeros in front), then pool groups of k.
    Only the (T − 1)//k + 1 groups that some token reads are kept, so a T divisible by k gives exactly T/k."""
    groups = (x.size(1) - 1) // k + 1
    return pool_groups(F.pad(x, (0, 0, k - 1, 0))[:, :groups * k], k, proj)


def segment_index(boundaries: Tensor) -> Tensor:
    """(B, T) 0/1 boundaries (1: a segment ends at t) → the index of the segment holding each token (long)."""
    hard = boundaries.detach().round().long()
    return hard.cumsum(1) - hard


def pool_segments(h: Tensor, boundaries: Tensor, capacity: int) -> Tensor:
    """(B, T, D) states, (B, T) boundaries → (B, capacity, D): the mean of each segment's states in slot
    `segment index`, zeros in slots no segment reaches; tokens of segments past the capacity are dropped.

    `boundaries` may carry a straight-through gradient: each token's pooling weight is 1 in value with the
    derivative of its segment index, as in the paper's code, so the pooled means pass gradient to the boundary
    predictor. The sums run in fp32 (a long segment summed in bf16 loses its mean)."""
    ids = segment_index(boundaries)
    soft = boundaries.float().cumsum(1) - boundaries.float()
    weight = (1.0 + (soft - soft.detach())) * (ids < capacity)
    slot = ids.clamp(max=capacity - 1)
    bsz, _, dim = h.shape
    sums = h.new_zeros(bsz, capacity, dim, dtype=torch.float32).scatter_add(
        1, slot[..., None].expand(-1, -1, dim), h.float() * weight[..., None])
    counts = weight.new_zeros(bsz, capacity).scatter_add(1, slot, weight)
    return (sums / counts.clamp(min=1e-6)[..., None]).to(h.dtype)


def expand_segments(short: Tensor, boundaries: Tensor) -> Tensor:
    """(B, S, D) middle-layer outputs of [null, segment 0, segment 1, …] → (B, T, D): token t gets slot
    (segments ended at or before t), capped at S − 1, whose segment has also ended by t."""
    completed = boundaries.detach().round().long().cumsum(1).clamp(max=short.size(1) - 1)
    return short.gather(1, completed[..., None].expand(-1, -1, short.size(-1)))


def run_shortened(model: nn.Module, x: Tensor, outer: int, shorten: Callable[[Tensor], tuple[Tensor, Any]],
                  expand: Callable[[Tensor, Any], Tensor]) -> Tensor:
    """The GPT's U-Net of blocks with depths outer .. n − outer − 1 on a shortened sequence: `shorten(x)` gives
    (short, context) before depth `outer`, `expand(short, context)` is added to the states saved there after
    depth n − outer − 1. The U-Net skips pair depth d with n − 1 − d (the baseline's pairing for an even n; for
    an odd n the centre block takes none instead of the last), so with outer layers on both sides each skip
    joins two depths of the same resolution. The short layers mix with their own input where the full ones mix
    with the embedding."""
    n, n_enc = len(model.order), len(model.order) // 2
    x0 = x0_full = x
    skips, residual, context = [], x, None
    for depth in range(n + 1):
        if depth == outer:
            residual = x
            x, context = shorten(x)
            x0 = x
        if depth == n - outer:
            x, x0 = residual + expand(x, context), x0_full
        if depth == n:
            break
        if depth >= n - n_enc:
            x = x + model.skip_weights[depth - n + n_enc].to(x.dtype) * skips.pop()
        x = model.apply_block(depth, model.order[depth], x, x0)
        if depth < n_enc:
            skips.append(x)
    return x
