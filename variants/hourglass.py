"""hourglass — full-resolution outer layers around middle layers that run on a sequence shortened k times.

Hourglass transformer (Nawrot et al. 2021, "Hierarchical Transformers Are More Efficient Language Models",
arXiv 2110.13711). The first `outer_layers` blocks run on all T tokens; their states are shifted right by
k − 1 (`shorten_factor` k), pooled in groups of k (mean, or a linear map of the k concatenated states), and the
middle blocks run on the T/k pooled positions with ordinary causal attention and RoPE over the short sequence;
their output is upsampled (each short state repeated k times, or a linear map giving each of the k positions
its own) and added to the states saved before shortening, and the last `outer_layers` blocks run on all T
again. Causal: after the shift, short position g pools tokens gk − k + 1 .. gk and is read by tokens
gk .. gk + k − 1, and the middle attention is causal over groups, so token t only receives states of tokens
≤ t. A T not divisible by k is padded at the end. The U-Net skips pair depth d with n − 1 − d, so outer
joins outer and middle joins middle (at 9 layers the centre block takes no skip, where the baseline's last
block takes one).

Stored: the baseline's numbers exactly with mean pooling and repeat upsampling (17,059,912); each linear
option adds k·512² numbers (k = 2: 524,288, over the 16 MB cap once trained), initialised to the mean and the
repeat so they start where the defaults do. Compute per token at 9 layers, 2 outer + 5 middle + 2 outer: block
matmuls cost 4 + 5/k layer-equivalents (k2: 6.5/9 = 72% of the baseline, k4: 5.25/9 = 58%); the middle
layers' attention scores cost 1/k² of a full layer's; the tied head is unchanged. On a GPU the short layers
are the same kernels on fewer rows (flash attention over T/k), so step time falls with the FLOPs once the
batch keeps the matmuls busy. Expected: more steps in the wallclock at a small loss per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from harness.config import param
from harness.model import GPT, CastedLinear, round_to_bf16_
from harness.registry import register
from harness.shortening import ShortenedConfig, hourglass_shorten, run_shortened, upsample_groups


@dataclass(frozen=True)
class HourglassConfig(ShortenedConfig):
    shorten_factor: int = param(2, "the middle layers run on T / this positions", low=2, high=16)
    pool: str = param("mean", "how k shifted states become one: their mean, or a learned map of their "
                      "concatenation", choices=("mean", "linear"))
    upsample: str = param("repeat", "how one short state returns to k positions: repeated, or a learned map "
                          "per position", choices=("repeat", "linear"))


class HourglassGPT(GPT):
    def __init__(self, c: HourglassConfig):
        super().__init__(c)
        k, d = c.shorten_factor, c.model_dim
        self.pool_proj = self.up_proj = None
        if c.pool == "linear":
            self.pool_proj = CastedLinear(k * d, d)
            with torch.no_grad():
                self.pool_proj.weight.copy_(torch.eye(d).repeat(1, k) / k)
            round_to_bf16_(self.pool_proj.weight)
        if c.upsample == "linear":
            self.up_proj = CastedLinear(d, k * d)
            with torch.no_grad():
                self.up_proj.weight.copy_(torch.eye(d).repeat(k, 1))

    def run_blocks(self, x: Tensor) -> Tensor:
        k, seq_len = self.config.shorten_factor, x.size(1)
        return run_shortened(self, x, self.config.outer(),
                             lambda h: (hourglass_shorten(h, k, self.pool_proj), None),
                             lambda short, _: upsample_groups(short, k, seq_len, self.up_proj))


register("hourglass", config=HourglassConfig, build=HourglassGPT, doc=__doc__, presets={
    "k2": {"shorten_factor": 2},
    "k4": {"shorten_factor": 4},
})
