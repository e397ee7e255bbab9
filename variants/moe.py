"""moe — each block's MLP split into routed experts; every token picks its own by top-k or adaptive top-p.

Token-choice mixture of experts (harness/experts.py): a linear router on the token's normed state gives softmax
probabilities over `num_experts` relu² experts, and the selected experts' outputs are summed with their
probabilities renormalised to 1 (the sum held constant backwards, so that a token with one expert still trains
the router; routers train with Adam). Attention is the baseline's. Routing (`--routing`):
  topk       the `top_k` most probable experts, with Switch/GShard's load-balancing loss E·Σ f_e·P_e
             (Fedus et al. 2021, arXiv 2101.03961; Lepikhin et al. 2020, arXiv 2006.16668).
  top_p      adaptive top-p (Huang et al. 2024, "Harder Tasks Need More Experts: Dynamic Routing in MoE
             Models", arXiv 2403.07652): experts by falling probability until their sum reaches `top_p`
             (at least one), plus the paper's dynamic loss (mean router entropy, so that confident routers pick
             fewer experts) and the balancing loss.
  layer_p    top-p with p falling linearly from `p_first` at the first layer to `p_last` at the last, after
             the paper's finding that lower layers use more experts.
  learned_p  top-p with a per-token p = p_min + (1 − p_min)·σ(w·x + b) from a linear head, started at `top_p`.
             Trained straight through: the forward pass uses the hard prefix mask, the backward pass the soft
             mask σ((p − probability ahead)/0.1) over the sorted cumulative probabilities, plus a training-only
             cost `count_weight`·(soft expert count) so that more experts are not free.
Losses are training-only and averaged over layers; routing is per token, so it is causal with no capacity
limit. Every expert runs densely and unselected outputs are multiplied by zero: a grouped-GEMM dispatch would
compute only the selected ones, and `sparse_compute_fraction` in the metrics is the share of the dense expert
compute it would run (with the per-layer expert loads, router entropy, experts per token and learned_p's
mean p).
Stored: all experts. By default 4 experts of width mlp_mult·dim/4 = 256 hold exactly the baseline MLP's
numbers, kept as the blocks of one fc and one proj matrix so that Muon steps, trained weight scales and int8
bytes stay the baseline's (harness/experts.py says why), plus a 4×512 router a layer: 17,078,344 stored
(baseline 17,059,912; learned_p's heads add 4,617), 4.94 MB at init; the routers add ~37 KB to the trained
artifact's ~15.9 MB. Wider experts would go over the cap. Per token the dense form costs the baseline's MLP
FLOPs plus the router and the routing (a sort of E probabilities); a sparse form would run k/4 of the MLP
(top-2: half). Expected: near the baseline per step at equal stored numbers; the gain an MoE usually buys with
more stored experts is out of reach under 16 MB, so what this measures is routing at equal size and how much
compute per token the top-p routings ask for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from harness.config import param
from harness.errors import UserError
from harness.experts import ExpertConfig, ExpertGPT, RoutedMLP, routing_mask, sort_experts, unsort
from harness.model import CastedLinear
from harness.registry import register

SOFT_MASK_TEMPERATURE = 0.1  # learned_p's backward mask: an expert 0.1 of probability past p is ~73% kept


@dataclass(frozen=True)
class MoEConfig(ExpertConfig):
    routing: str = param("topk", "topk: the top_k most probable experts; top_p: experts until their probability "
                         "reaches top_p; layer_p: p from p_first to p_last over the layers; learned_p: a per-token "
                         "p from a learned head", choices=("topk", "top_p", "layer_p", "learned_p"))
    top_k: int = param(2, "experts per token under --routing topk", low=1, high=64)
    top_p: float = param(0.4, "top_p: the probability a token's experts must reach; learned_p: p at init",
                         low=0.001, high=1.0)
    p_first: float = param(0.6, "layer_p: p at the first layer", low=0.001, high=1.0)
    p_last: float = param(0.2, "layer_p: p at the last layer (linear in between, at any depth)", low=0.001, high=1.0)
    p_min: float = param(0.1, "learned_p: the least p the head can predict", low=0.0, high=0.99)
    dynamic_weight: float = param(1e-4, "weight of the training-only dynamic loss (mean router entropy) under the "
                                  "top-p routings", low=0.0)
    count_weight: float = param(0.01, "learned_p: training-only cost per expert a token uses (soft count)", low=0.0)

    def check(self) -> None:
        super().check()
        if self.routing == "topk" and self.top_k > self.num_experts:
            raise UserError(f"--top-k {self.top_k} is more than --num-experts {self.num_experts}; lower --top-k")
        if self.routing == "learned_p" and not self.p_min < self.top_p < 1.0:
            raise UserError(f"--top-p {self.top_p} (learned_p's p at init) must lie between --p-min {self.p_min} "
                            f"and 1")

    def layer_threshold(self, layer: int) -> float:
        if self.routing == "layer_p":
            return self.p_first + (self.p_last - self.p_first) * layer / max(self.num_layers - 1, 1)
        return self.top_p


class DynamicRoutedMLP(RoutedMLP):
    """RoutedMLP with the top-p routings (top-k is the parent's)."""

    def __init__(self, c: MoEConfig, layer: int):
        topk = c.routing == "topk"
        super().__init__(c, top_k=c.top_k if topk else 0, entropy_weight=0.0 if topk else c.dynamic_weight)
        self.routing, self.p = c.routing, c.layer_threshold(layer)
        self.p_min, self.count_weight = c.p_min, c.count_weight
        if c.routing == "learned_p":
            self.threshold = CastedLinear(c.model_dim, 1, zero_init=True)
            start = (c.top_p - c.p_min) / (1.0 - c.p_min)
            self.threshold_bias = nn.Parameter(torch.tensor(math.log(start / (1.0 - start))))
            self.register_buffer("eval_p", torch.zeros((), dtype=torch.float64), persistent=False)

    def select(self, x: Tensor, probs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        if self.routing == "topk":
            return super().select(x, probs)
        if self.routing != "learned_p":
            return routing_mask(probs, top_p=self.p), {}
        p = self.p_min + (1.0 - self.p_min) * torch.sigmoid(self.threshold(x).float() + self.threshold_bias)
        order, before = sort_experts(probs)
        hard = (before < p).float()
        soft = torch.sigmoid((p - before) / SOFT_MASK_TEMPERATURE)
        if not self.training:
            with torch.no_grad():
                self.eval_p += p.sum().double()
        return unsort(hard + soft - soft.detach(), order), {"expert_count": self.count_weight * soft.sum(-1).mean()}

    def train(self, mode: bool = True):
        if not mode and self.routing == "learned_p":
            self.eval_p.zero_()
        return super().train(mode)

    def metrics(self, prefix: str) -> dict[str, float]:
        out = super().metrics(prefix)
        if out and self.routing == "learned_p":
            out[f"{prefix}.mean_p"] = self.eval_p.item() / self.eval_tokens.item()
        return out

    def adam_params(self) -> list[nn.Parameter]:
        return super().adam_params() + ([self.threshold.weight] if self.routing == "learned_p" else [])


def build(c: MoEConfig) -> ExpertGPT:
    return ExpertGPT(c, lambda layer: DynamicRoutedMLP(c, layer))


register("moe", config=MoEConfig, build=build, doc=__doc__, presets={
    "top1": {"routing": "topk", "top_k": 1},  # Switch
    "top2": {"routing": "topk", "top_k": 2},  # GShard; the default
    "topp04": {"routing": "top_p", "top_p": 0.4},
    "layer_p": {"routing": "layer_p", "p_first": 0.6, "p_last": 0.2},
    "learned_p": {"routing": "learned_p", "top_p": 0.4},
})
