"""Token-choice mixtures of relu² MLP experts: the pieces the expert-routing families (moe, micro) share.

Each block's MLP becomes E experts and a router. A token's routing reads its own hidden state only, and no
expert has a capacity (nothing is dropped across the batch or the sequence), so the mixture is causal and
sequences never meet. Every expert runs on every token and a token's unselected experts are multiplied by
zero: static shapes and one compiled graph, and every parameter is in the autograd graph on every step, as DDP
without find_unused_parameters needs. A grouped-GEMM dispatch kernel would compute only the selected experts;
`metrics()` reports the fraction of the dense expert compute it would run (`sparse_compute_fraction`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from harness.config import param
from harness.errors import UserError
from harness.model import GPT, Block, CastedLinear, GPTConfig
from harness.optim import ParamGroup, default_param_groups


@dataclass(frozen=True)
class ExpertConfig(GPTConfig):
    """The baseline with each block's MLP split into routed experts."""
    num_experts: int = param(4, "MLP experts per block", low=1, high=64)
    expert_hidden: int = param(0, "hidden width of each expert (0: mlp_mult·model_dim / num_experts, so the "
                               "experts together store the baseline MLP's numbers)", low=0, high=65536)
    balance_weight: float = param(0.01, "weight of the training-only load-balancing loss E·Σ f_e·P_e (Switch)",
                                  low=0.0)

    def expert_width(self) -> int:
        return self.expert_hidden or self.mlp_mult * self.model_dim // self.num_experts

    def check(self) -> None:
        super().check()
        if self.expert_width() < 1:
            raise UserError(f"--num-experts {self.num_experts} leaves experts of width 0 "
                            f"(mlp_mult·model_dim = {self.mlp_mult * self.model_dim}); set --expert-hidden")


def sort_experts(probs: Tensor) -> tuple[Tensor, Tensor]:
    """(order, before): experts by falling probability, and the probability summed over the experts ahead of
    each one in that order (0 for the first). A stable sort: ties go to the lower index, the same every time."""
    ranked, order = probs.sort(dim=-1, descending=True, stable=True)
    return order, ranked.cumsum(-1) - ranked


def unsort(values: Tensor, order: Tensor) -> Tensor:
    """Values given in `order` (from sort_experts) back in expert order; differentiable in `values`."""
    return values.new_zeros(order.shape).scatter(-1, order, values)


def routing_mask(probs: Tensor, top_k: int = 0, top_p: Tensor | float | None = None) -> Tensor:
    """(…, E) router probabilities → (…, E) 0/1 mask of each token's experts. top_k > 0: its k most probable;
    otherwise the most probable experts, in order, until their summed probability reaches top_p (a float or a
    (…, 1) tensor): the smallest such prefix, and never fewer than one expert."""
    order, before = sort_experts(probs)
    if top_k:
        keep = torch.arange(probs.size(-1), device=probs.device) < top_k
        return unsort(keep.to(probs.dtype).expand_as(probs), order)
    return unsort((before < top_p).to(probs.dtype), order)


def gate_weights(probs: Tensor, mask: Tensor) -> Tensor:
    """The selected experts' probabilities renormalised to sum to 1. The sum is held constant in the backward
    pass: a true p/p would give a token with one expert a constant gate of 1 and its router no gradient."""
    kept = probs * mask
    return kept / kept.sum(-1, keepdim=True).detach()


def balance_loss(probs: Tensor, mask: Tensor) -> Tensor:
    """Switch Transformer's E·Σ_e f_e·P_e over the micro-batch's tokens: f_e the share of routed assignments that
    went to expert e (no gradient), P_e its mean router probability; 1 when both are uniform."""
    f = mask.detach().flatten(0, -2).sum(0)
    return probs.size(-1) * (f / f.sum() * probs.flatten(0, -2).mean(0)).sum()


class Experts(nn.Module):
    """E relu² MLPs of hidden width H, stored as the blocks of one (E·H, dim) and one (dim, E·H) matrix: expert
    e owns fc's rows and proj's columns e·H..(e+1)·H − 1, and a token's gates scale its E hidden blocks. Muon
    therefore orthogonalises the experts' updates together, as the baseline's MLP: at E·H = mlp_mult·dim its
    steps, and so the trained weights' scale and their int8 bytes (int8 steps are at least 1/127 absolute), are
    the baseline's. Separate per-expert matrices would be narrower, and Muon gives narrower matrices larger
    steps per number (expert proj 512×256: 2× the baseline's), which costs bytes the cap has no room for."""

    def __init__(self, dim: int, hidden: int, num_experts: int):
        super().__init__()
        self.num_experts, self.hidden = num_experts, hidden
        self.fc = CastedLinear(dim, num_experts * hidden)
        self.proj = CastedLinear(num_experts * hidden, dim, zero_init=True)

    def forward(self, x: Tensor, gates: Tensor) -> Tensor:
        h = torch.relu(self.fc(x)).square().unflatten(-1, (self.num_experts, self.hidden))
        return self.proj((h * gates.to(h.dtype)[..., None]).flatten(-2))


class RoutedMLP(nn.Module):
    """A block's MLP as experts behind a linear router on the token's normed state (softmax probabilities).
    `select` picks each token's experts; the default takes the top_k most probable (top_k = E: a soft mixture
    of all). Training keeps the weighted loss terms in `aux` for the model to collect; evaluation counts each
    expert's assignments (under a soft mixture, where every expert gets every token, its gates instead), the
    router entropy and the tokens, which `train(False)` zeroes."""

    def __init__(self, c: ExpertConfig, top_k: int = 1, entropy_weight: float = 0.0):
        super().__init__()
        self.num_experts, self.top_k = c.num_experts, top_k
        self.balance_weight, self.entropy_weight = c.balance_weight, entropy_weight
        self.router = CastedLinear(c.model_dim, c.num_experts)
        self.experts = Experts(c.model_dim, c.expert_width(), c.num_experts)
        self.aux: dict[str, Tensor] | None = None
        for name, shape in (("eval_load", (c.num_experts,)), ("eval_assigned", ()), ("eval_entropy", ()),
                            ("eval_tokens", ())):
            self.register_buffer(name, torch.zeros(shape, dtype=torch.float64), persistent=False)

    def select(self, x: Tensor, probs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Each token's experts as a (…, E) mask whose values are 0 or 1, and any weighted training-only loss
        terms of the selection itself."""
        return routing_mask(probs, top_k=self.top_k), {}

    def forward(self, x: Tensor) -> Tensor:
        log_probs = torch.log_softmax(self.router(x).float(), dim=-1)
        probs = log_probs.exp()
        entropy = -(probs * log_probs).sum(-1)
        mask, losses = self.select(x, probs)
        out = self.experts(x, gate_weights(probs, mask))
        if self.training:
            if self.balance_weight and self.top_k < self.num_experts:  # a soft mixture has nothing to balance
                losses["balance"] = self.balance_weight * balance_loss(probs, mask)
            if self.entropy_weight:
                losses["dynamic"] = self.entropy_weight * entropy.mean()
            self.aux = losses
        else:
            with torch.no_grad():
                mask = mask.detach()
                share = mask if self.top_k < self.num_experts else probs
                self.eval_load += share.flatten(0, -2).sum(0).double()
                self.eval_assigned += mask.sum().double()
                self.eval_entropy += entropy.sum().double()
                self.eval_tokens += entropy.numel()
        return out

    def train(self, mode: bool = True):
        if not mode:  # each evaluation starts by switching to eval mode: count its tokens afresh
            for buffer in (self.eval_load, self.eval_assigned, self.eval_entropy, self.eval_tokens):
                buffer.zero_()
        return super().train(mode)

    def metrics(self, prefix: str) -> dict[str, float]:
        tokens, load = self.eval_tokens.item(), self.eval_load.tolist()
        if not tokens:
            return {}
        out = {f"{prefix}.expert_load.{e}": v / sum(load) for e, v in enumerate(load)}
        return {**out, f"{prefix}.router_entropy": self.eval_entropy.item() / tokens,
                f"{prefix}.experts_per_token": self.eval_assigned.item() / tokens}

    def adam_params(self) -> list[nn.Parameter]:
        """2-D parameters that are vectors in spirit (a router row per expert): Adam, not Muon."""
        return [self.router.weight]


class ExpertGPT(GPT):
    """The baseline with block i's MLP replaced by `make_mlp(i)`, a RoutedMLP; attention is unchanged.
    Training returns the routers' loss terms, each the mean over layers."""

    def __init__(self, c: ExpertConfig, make_mlp: Callable[[int], RoutedMLP]):
        super().__init__(c, blocks=[Block(c, mlp=make_mlp(i)) for i in range(c.num_layers)])

    def routed(self) -> list[RoutedMLP]:
        return [block.mlp for block in self.blocks]

    def forward(self, input_ids: Tensor):
        logits = super().forward(input_ids)
        if not self.training:
            return logits
        layers, terms = self.routed(), {}
        for mlp in layers:
            for name, term in (mlp.aux or {}).items():
                terms[name] = terms.get(name, 0.0) + term / len(layers)
            mlp.aux = None  # a kept graph would also stop the model from being copied
        return logits, terms

    def metrics(self) -> dict[str, float]:
        """Per layer: each expert's share of the routed assignments (of the gates, under a soft mixture), the
        mean router entropy (nats) and the experts per token; overall: experts per token and the fraction of
        the dense expert compute (all experts on every token) that a sparse dispatch would run."""
        out: dict[str, float] = {}
        for i, mlp in enumerate(self.routed()):
            out.update(mlp.metrics(f"layer{i}"))
        per_layer = [v for k, v in out.items() if k.endswith(".experts_per_token")]
        if per_layer:
            mean = sum(per_layer) / len(per_layer)
            out.update(experts_per_token=mean, sparse_compute_fraction=mean / self.config.num_experts)
        return out

    def param_groups(self, c: ExpertConfig) -> list[ParamGroup]:
        """The baseline's split, except that the routers (and any threshold heads) train with Adam."""
        vectors = [p for mlp in self.routed() for p in mlp.adam_params()]
        return default_param_groups(self, c, ParamGroup("router", vectors, "adam", c.scalar_lr))
