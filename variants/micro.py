"""micro — Mixture of Cognitive Reasoners: every block's MLP split into named specialists, one per token.

MiCRo (AlKhamissi et al. 2025, arXiv 2506.13331) partitions each layer of a language model into four experts
named after brain networks, language, logic, social and world knowledge (expert 0..3 in the metrics; the first
`num_experts` of them), and a per-layer router sends each token to one expert. Here the experts are the
block's relu² MLPs (harness/experts.py; attention is shared) and `--routing top1` is the paper's hard top-1
choice, its gate 1 in value with the router trained through it (the probability's sum held constant
backwards); `soft` gives every specialist its router probability, a weighted sum of all. What this cannot
copy: the paper starts from a pretrained model and makes the experts specialise with a curriculum of
domain-labelled data, which a from-scratch run on unlabelled web text does not have. It therefore asks whether
specialists emerge unsupervised, and by default without a balancing loss (the paper has none): the per-layer
expert loads in the metrics show whether they do or one expert takes over.
Stored: 4 specialists of width mlp_mult·dim/4 = 256 hold the baseline MLP's numbers, plus the routers:
17,078,344 (baseline 17,059,912), 4.94 MB at init. Per token the dense form costs the baseline's MLP plus the
router; a top-1 dispatch would run a quarter of the MLP (`sparse_compute_fraction`); soft runs it all.
Expected: at best level with the baseline on val_bpb; the point is whether the loads specialise.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.config import param
from harness.experts import ExpertConfig, ExpertGPT, RoutedMLP
from harness.registry import register

SPECIALISTS = ("language", "logic", "social", "world")


@dataclass(frozen=True)
class MiCRoConfig(ExpertConfig):
    num_experts: int = param(4, "specialists per block: the first N of " + ", ".join(SPECIALISTS), low=2,
                             high=len(SPECIALISTS))
    routing: str = param("top1", "top1: each token to its most probable specialist (the paper); soft: a "
                         "probability-weighted sum of all of them", choices=("top1", "soft"))
    balance_weight: float = param(0.0, "weight of the training-only load-balancing loss E·Σ f_e·P_e under top1 "
                                  "(0: none, as the paper)", low=0.0)


def build(c: MiCRoConfig) -> ExpertGPT:
    top_k = 1 if c.routing == "top1" else c.num_experts  # all of them, renormalised: the router probabilities
    return ExpertGPT(c, lambda layer: RoutedMLP(c, top_k=top_k))


register("micro", config=MiCRoConfig, build=build, doc=__doc__, presets={
    "soft": {"routing": "soft"},
    "language_logic": {"num_experts": 2},  # two specialists of width 512: each token gets half the MLP
})
