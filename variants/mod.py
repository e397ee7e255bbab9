"""mod — mixture-of-depths: in every other block a per-token router decides who goes through; the rest skip it.

Mixture-of-Depths (Raposo et al. 2024, arXiv 2404.02258), interleaved as in the paper: each routed block
(`route_layers`, default 1, 3, 5, 7 of 9) has a scalar router r = w·x̂ + b; a selected token gets
x + σ(r)·(block(x) − x), scaled so the router learns from the loss, the others the residual path unchanged.
Selected tokens attend only to earlier selected ones (at their true RoPE positions).

Selection. The paper trains with top-k over the sequence at `capacity` (12.5%), which is not causal (a token's
fate depends on later ones): `selection topk_sequence` here, train and eval, for study only; the preflight
rejects it. The default `threshold` is the paper's first causal method: selected where r > 0, a training-only
BCE (`router_loss_weight`) teaching r's sign to predict top-k membership (the targets look ahead but enter only
the loss, never the logits). Chosen over the paper's predictor MLP: one logit both decides and weights, nothing
is added to the artifact, and the paper puts its cost at 0.2–0.3% of the loss. Capacity is met on average, not
per sequence; b starts at ‖w‖·Φ⁻¹(capacity) so about that fraction is selected from the first step.

Dense form (static shapes, one graph): every token runs every block; skipped ones are dropped by a `where`.
The key mask rides in an extra head dimension, not an attention mask, so flash attention still takes the call:
q has 1 there, a selected key 0, a skipped key −10⁴·√D (exp(−10⁴) = 0), all zero-padded by 8 to keep head dims
multiples of 8 (64 → 72: +12.5% attention work in routed blocks). Stored: the baseline plus d + 1 numbers a
routed block (2,052 at full size). A gather kernel would run routed blocks' projections and MLP on a fraction c
of the tokens and attention on c² of the scores (the threshold's count varies per sequence: it needs variable
lengths or a cap); metrics() reports that fraction per routed block, over routed blocks and over all blocks.
Expected (paper): near-baseline loss per step at much less compute per token; here no faster (dense).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.config import param
from harness.errors import UserError
from harness.model import GPT, Block, CastedLinear, CausalSelfAttention, GPTConfig, rms_norm
from harness.optim import ParamGroup, default_param_groups
from harness.registry import register

MASK_SCORE = 1e4  # subtracted from a skipped key's score: exp(−10⁴) is exactly 0 in fp32
MASK_PAD = 8  # extra head dims carrying the mask: flash attention takes head dims in multiples of 8


@dataclass(frozen=True)
class MoDConfig(GPTConfig):
    capacity: float = param(0.125, "fraction of tokens a routed block processes (top-k's k/T; the threshold's "
                            "target rate)", low=0.01, high=1.0)
    route_layers: tuple[int, ...] = param((), "blocks that route tokens, e.g. 1,3,5,7 (empty: every other block "
                                          "from block 1, as the paper interleaves; block 0 of a 1-block model)",
                                          low=0)
    selection: str = param("threshold", "threshold: causal, a token is processed where its router logit > 0; "
                           "topk_sequence: the paper's top-k over the whole sequence, NOT causal (study only)",
                           choices=("threshold", "topk_sequence"))
    router_loss_weight: float = param(0.1, "weight of the training-only BCE teaching the router logit's sign to "
                                      "predict top-k membership", low=0.0)

    def routed(self) -> tuple[int, ...]:
        return self.route_layers or (tuple(range(1, self.num_layers, 2)) if self.num_layers > 1 else (0,))

    def check(self) -> None:
        super().check()
        layers = self.route_layers
        if any(i >= self.num_layers for i in layers) or len(set(layers)) < len(layers):
            raise UserError(f"--route-layers {','.join(map(str, layers))} must name distinct blocks of the "
                            f"{self.num_layers}-layer model (0..{self.num_layers - 1})")


def top_fraction(scores: Tensor, capacity: float) -> Tensor:
    """Boolean mask of each row's top ⌈capacity·T⌉ scores over the last dim (looks at the whole sequence)."""
    k = max(1, math.ceil(capacity * scores.size(-1)))
    return torch.zeros_like(scores, dtype=torch.bool).scatter(-1, scores.topk(k, dim=-1).indices, True)


class SelectedAttention(CausalSelfAttention):
    """The baseline's attention, with only the selected tokens as keys."""

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        bsz, seqlen, _ = x.shape
        dim = self.head_dim
        q, k, v = self.heads_first(*(lin(x).reshape(bsz, seqlen, -1, dim) for lin in (self.c_q, self.c_k, self.c_v)))
        # After the gain, so its sign cannot flip the mask: score += 1·(−MASK_SCORE·√D) · D^−½ on skipped keys.
        skip = (~keep).to(k.dtype)[:, None, :, None].expand(-1, self.num_kv_heads, -1, -1) * (-MASK_SCORE * dim ** 0.5)
        q = torch.cat((q, torch.ones_like(q[..., :1]), torch.zeros_like(q[..., 1:MASK_PAD])), dim=-1)
        k = torch.cat((k, skip, torch.zeros_like(k[..., 1:MASK_PAD])), dim=-1)
        y = F.scaled_dot_product_attention(q, k, F.pad(v, (0, MASK_PAD)), is_causal=True, scale=dim ** -0.5,
                                           enable_gqa=self.num_kv_heads != self.num_heads)
        return self.proj(y[..., :dim].transpose(1, 2).reshape(bsz, seqlen, -1))


class RoutedBlock(Block):
    def __init__(self, c: MoDConfig):
        super().__init__(c, attn=SelectedAttention(c))
        self.capacity, self.selection = c.capacity, c.selection
        self.router = CastedLinear(c.model_dim, 1)
        # The logit of a normed input is ≈ N(b, ‖w‖²) at init: start with about `capacity` of it above 0.
        quantile = torch.special.ndtri(torch.tensor(min(c.capacity, 0.999)))
        self.router_bias = nn.Parameter(quantile * self.router.weight.detach().norm())
        self.register_buffer("eval_counts", torch.zeros(2, dtype=torch.float64), persistent=False)  # kept, seen

    def forward(self, x: Tensor, x0: Tensor) -> Tensor:
        logit = self.router(rms_norm(x)).squeeze(-1).float() + self.router_bias
        top = top_fraction(logit.detach(), self.capacity) if self.training or self.selection != "threshold" else None
        keep = logit > 0 if self.selection == "threshold" else top
        mix = self.resid_mix.to(x.dtype)
        h = mix[0] * x + mix[1] * x0
        h = h + self.attn_scale.to(x.dtype) * self.attn(rms_norm(h), keep)
        h = h + self.mlp_scale.to(x.dtype) * self.mlp(rms_norm(h))
        if self.training:  # read by the model after the blocks: a training-only term, never part of the logits
            self.router_loss = F.binary_cross_entropy_with_logits(logit, top.float())
        else:
            self.eval_counts += torch.stack((keep.sum().double(), keep.new_tensor(keep.numel(), dtype=torch.float64)))
        return torch.where(keep[..., None], x + torch.sigmoid(logit).to(x.dtype)[..., None] * (h - x), x)

    def train(self, mode: bool = True):
        if not mode:  # each evaluation starts by switching to eval mode: count its tokens afresh
            self.eval_counts.zero_()
        return super().train(mode)


class MoDGPT(GPT):
    def __init__(self, c: MoDConfig):
        routed = set(c.routed())
        super().__init__(c, blocks=[RoutedBlock(c) if i in routed else Block(c) for i in range(c.num_layers)])
        self.routed = [block for block in self.blocks if isinstance(block, RoutedBlock)]

    def forward(self, input_ids: Tensor):
        logits = super().forward(input_ids)
        if not self.training:
            return logits
        bce = torch.stack([block.router_loss for block in self.routed]).mean()
        for block in self.routed:
            block.router_loss = None  # a graph held by the module would block deepcopy (and keep memory alive)
        return logits, {"router_bce": self.config.router_loss_weight * bce}

    def metrics(self) -> dict[str, float]:
        counts = {i: block.eval_counts.tolist() for i, block in enumerate(self.blocks) if block in self.routed}
        if not all(seen for _, seen in counts.values()):
            return {}
        out = {f"processed_fraction_l{i}": kept / seen for i, (kept, seen) in counts.items()}
        routed = sum(out.values()) / len(out)
        return {"processed_fraction_routed": routed,
                "processed_fraction_all_blocks": 1 - (1 - routed) * len(out) / len(self.blocks), **out}

    def param_groups(self, c: MoDConfig) -> list[ParamGroup]:
        """The baseline's split, except that each router (one row: a vector in spirit) trains with Adam."""
        routers = [block.router.weight for block in self.routed]
        return default_param_groups(self, c, ParamGroup("router", routers, "adam", c.scalar_lr))


register("mod", config=MoDConfig, build=MoDGPT, doc=__doc__, presets={
    "c125": {"capacity": 0.125},  # the paper's best setting (the default)
    "c50": {"capacity": 0.5},
})
