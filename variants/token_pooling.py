"""token_pooling — a learned boundary predictor merges tokens into segments; the middle layers run on segments.

Dynamic token pooling (Nawrot et al. 2023, "Efficient Transformers with Dynamic Token Pooling", arXiv
2211.09761). After the first `outer_layers` blocks a linear predictor reads each token's (RMS-normed) state and
ends a segment at t when its logit is positive; each segment's states are mean-pooled (then RMS-normed, the
paper's LayerNorm) into one vector, the middle blocks run causally on [null, segment 0, segment 1, …] (RoPE
over segment index), and token t receives the output at the slot of the last segment that ended at or before t
(the learned null slot before any has): the paper's shift by one segment. That output is added to the states
saved before pooling, and the last `outer_layers` blocks predict at token level. Causal: the boundary at t
depends on tokens ≤ t, a slot holds only tokens of its segment, and the slot a token reads, and every slot
before it, holds only tokens ≤ t. Training: straight-through boundaries (hard in the forward, the sigmoid's
gradient in the backward, through the pooling weights as in the paper's code) and, training only, the paper's
binomial prior −log Binomial(#boundaries; T, boundary_rate) / T. The paper samples Gumbel-sigmoid noise; here
the threshold is deterministic, because the harness checks that a training forward is a function of its input
(preflight causality in train mode, the DDP step equivalence). The predictor's bias starts at
Φ⁻¹(boundary_rate), so about that fraction of tokens end a segment at init.

Static shapes: the number of segments varies per sequence, so segments go into a buffer of
ceil(T·segment_buffer) slots behind the null; tokens of segments past it are left out of the middle layers
and read the last slot (still causal). The middle layers therefore compute all 1 + T·segment_buffer slots; a
varlen kernel would compute only the filled ones. metrics(): mean_shortening_factor (tokens per completed
segment), middle_slots_filled (the fraction a varlen kernel would compute) and overflow_token_fraction.
Stored: the baseline's numbers plus the predictor (513) and the null vector (512): 17,060,937. Compute per
token at 9 layers (2 + 5 + 2): 4 + 5·segment_buffer layer-equivalents of block matmuls (rate4: 6.5/9 = 72%,
varlen at the target rate 5.25/9; rate2: 7.75/9 = 86%, varlen 6.5/9), plus a scatter and a gather of T·d.
Expected: close to hourglass at the same rate, better if the learned boundaries find units worth merging.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.config import param
from harness.errors import UserError
from harness.model import GPT, rms_norm
from harness.registry import register
from harness.shortening import ShortenedConfig, expand_segments, pool_segments, run_shortened


@dataclass(frozen=True)
class TokenPoolingConfig(ShortenedConfig):
    boundary_rate: float = param(0.25, "prior fraction of tokens that end a segment (binomial prior target)",
                                 low=0.01, high=0.99)
    segment_buffer: float = param(0.5, "segment slots per token for the middle layers; segments past "
                                  "ceil(T * this) are left out", low=0.01, high=1.0)
    prior_weight: float = param(1.0, "weight of the training-only binomial prior loss on the boundary count",
                                low=0.0)

    def check(self) -> None:
        super().check()
        if self.segment_buffer < self.boundary_rate:
            raise UserError(f"--segment-buffer {self.segment_buffer} is below --boundary-rate "
                            f"{self.boundary_rate}: the buffer could not hold the target number of segments; "
                            f"raise it to at least the rate")


def binomial_prior_loss(boundaries: Tensor, rate: float) -> Tensor:
    """−log Binomial(k; T, rate) / T per sequence, averaged, with k the (straight-through) boundary count."""
    n, k = boundaries.size(1), boundaries.sum(1)
    log_prob = (math.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)
                + k * math.log(rate) + (n - k) * math.log1p(-rate))
    return -log_prob.mean() / n


class TokenPoolingGPT(GPT):
    def __init__(self, c: TokenPoolingConfig):
        super().__init__(c)
        d = c.model_dim
        # Logits w·rms_norm(h) start with unit spread, so the bias Φ⁻¹(rate) puts about `rate` of them above 0.
        self.boundary_weight = nn.Parameter(torch.randn(d) / math.sqrt(d))
        self.boundary_bias = nn.Parameter(torch.tensor(NormalDist().inv_cdf(c.boundary_rate)))
        self.null = nn.Parameter(torch.randn(d))  # unit RMS, as the normed pooled segments
        for name in ("eval_tokens", "eval_segments", "eval_slots", "eval_filled", "eval_overflow"):
            self.register_buffer(name, torch.zeros((), dtype=torch.float64), persistent=False)

    def boundaries(self, h: Tensor) -> Tensor:
        """(B, T) 0/1 segment ends from each token's own state; straight-through gradient in training."""
        logit = F.linear(rms_norm(h), self.boundary_weight.to(h.dtype)[None]).squeeze(-1).float()
        logit = logit + self.boundary_bias
        hard = (logit > 0).float()
        if not self.training:
            return hard
        soft = torch.sigmoid(logit)
        return hard + soft - soft.detach()

    def shorten(self, h: Tensor) -> tuple[Tensor, Tensor]:
        capacity = math.ceil(h.size(1) * self.config.segment_buffer)
        b = self.boundaries(h)
        pooled = rms_norm(pool_segments(h, b, capacity))
        null = self.null.to(h.dtype).expand(h.size(0), 1, -1)
        if not self.training:
            self.count(b.detach(), capacity)
        return torch.cat((null, pooled), dim=1), b

    @torch.no_grad()
    def count(self, b: Tensor, capacity: int) -> None:
        segments = b.sum(1)  # completed segments per sequence
        started = segments + (b[:, -1] == 0).float()  # and the unfinished one after the last boundary
        self.eval_tokens += b.numel()
        self.eval_segments += segments.sum().double()
        self.eval_slots += b.size(0) * (capacity + 1)
        self.eval_filled += (1 + started.clamp(max=capacity)).sum().double()
        self.eval_overflow += ((b.cumsum(1) - b) >= capacity).sum().double()

    def forward(self, input_ids: Tensor):
        b_out = []

        def shorten(h: Tensor) -> tuple[Tensor, Tensor]:
            short, b = self.shorten(h)
            b_out.append(b)
            return short, b

        x = run_shortened(self, self.embed(input_ids), self.config.outer(), shorten, expand_segments)
        logits = self.logits(x)
        if not self.training:
            return logits
        c = self.config
        return logits, {"boundary_prior": c.prior_weight * binomial_prior_loss(b_out[0], c.boundary_rate)}

    def train(self, mode: bool = True):
        if not mode:  # each evaluation starts by switching to eval mode: count its tokens afresh
            for buf in (self.eval_tokens, self.eval_segments, self.eval_slots, self.eval_filled, self.eval_overflow):
                buf.zero_()
        return super().train(mode)

    def metrics(self) -> dict[str, float]:
        tokens = self.eval_tokens.item()
        if not tokens:
            return {}
        return {"mean_shortening_factor": tokens / max(self.eval_segments.item(), 1.0),
                "middle_slots_filled": self.eval_filled.item() / self.eval_slots.item(),
                "overflow_token_fraction": self.eval_overflow.item() / tokens}


register("token_pooling", config=TokenPoolingConfig, build=TokenPoolingGPT, doc=__doc__, presets={
    "rate4": {"boundary_rate": 0.25, "segment_buffer": 0.5},
    "rate2": {"boundary_rate": 0.5, "segment_buffer": 0.75},
})
