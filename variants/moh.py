"""moh — mixture-of-head attention: some heads always on, each token picks its top-k of the others.

MoH (Jin et al. 2024, arXiv 2410.11842) treats attention heads as experts. In every block the first
⌊shared_ratio·H⌋ heads are shared (every token uses them) and the rest are routed: each token activates the
top-k of them, k = ⌊active_ratio·H⌋ − shared (8 heads by default: 2 shared + top-4 of 6 routed). The heads'
outputs, before the output projection, are weighted by the paper's two-stage gate: g_i = α₁·softmax(W_s x)_i
for a shared head, α₂·softmax(W_r x)_i for a selected routed head and 0 for an unselected one, with
[α₁, α₂] = softmax(W_h x) (no shared heads: g = softmax(W_r x) on the selected ones). One deviation: the gates
are multiplied by H, so that uniform gates give the baseline's plain sum of heads; the paper's sum to at most 1,
and under Muon's fixed-size updates an 8× smaller attention output would learn 8× slower. Training adds the
load-balancing loss β·(n_routed/k)·Σ_i f_i·P_i over routed heads (f_i: the fraction of tokens selecting head
i, P_i: its mean routing probability; 1 when balanced), averaged over layers. Everything else is the
baseline's attention (GQA, RoPE, q/k RMSNorm, learned q gain: `attend` is reused).

Stored: the baseline plus a router of (H + 2)·d numbers a layer reading the block's normed input (9·10·512 =
46,080 at full size, on Adam; the export keeps tensors this small as fp16, ≈+90 KB, so the trained artifact
sits close to the cap: the baseline's is ≈15.9 MB). Computed densely: every head attends for every token and
the unselected ones are multiplied by 0 (static shapes, one graph, flash attention unchanged), so per token it
costs the baseline's attention plus the router's (H + 2)·d multiply-adds a layer. A sparse kernel would skip,
per token, the unselected heads' query rows, scores, value mixing and output-projection columns: a fraction
1 − active/H of the per-head attention work (default 25%, h4of8 50%); K and V would still be computed for every
kv head, since other tokens select them. metrics() reports that fraction, the mean active heads per token and
each routed head's load (the fraction of tokens selecting it) per layer. Expected (paper): about the
baseline's val_bpb with 50–75% of the heads active; here no faster, since the dense form computes all heads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from harness.config import param
from harness.errors import UserError
from harness.model import GPT, Block, CastedLinear, CausalSelfAttention, GPTConfig
from harness.optim import ParamGroup, default_param_groups
from harness.registry import register


@dataclass(frozen=True)
class MoHConfig(GPTConfig):
    # Ratios, not counts, so one preset means the same split at 8 heads and at the tests' 2 (rounded down).
    shared_ratio: float = param(0.25, "fraction of each layer's heads that every token uses, rounded down "
                                "(0.25 of 8: 2)", low=0.0, high=0.99)
    active_ratio: float = param(0.75, "fraction of all heads a token uses, shared ones included, rounded down "
                                "(0.75 of 8: 6, i.e. top-4 of 6 routed)", low=0.01, high=1.0)
    balance_weight: float = param(0.01, "weight β of the training-only load-balancing loss over routed heads",
                                  low=0.0)

    def head_split(self) -> tuple[int, int]:
        """(shared heads, routed heads each token selects)."""
        shared = math.floor(self.shared_ratio * self.num_heads + 1e-9)
        return shared, math.floor(self.active_ratio * self.num_heads + 1e-9) - shared

    def check(self) -> None:
        super().check()
        shared, top_k = self.head_split()
        if top_k < 1:
            raise UserError(f"--active-ratio {self.active_ratio} leaves no routed head per token at "
                            f"{self.num_heads} heads with {shared} shared; raise --active-ratio above --shared-ratio")


class MoHAttention(CausalSelfAttention):
    def __init__(self, c: MoHConfig):
        super().__init__(c)
        self.shared, self.top_k = c.head_split()
        self.routed = c.num_heads - self.shared
        # Rows: W_s (shared), W_r (routed), then W_h's two (only when there is a shared group to mix with).
        self.router = CastedLinear(c.model_dim, c.num_heads + (2 if self.shared else 0))
        self.register_buffer("eval_load", torch.zeros(self.routed, dtype=torch.float64), persistent=False)
        self.register_buffer("eval_tokens", torch.zeros((), dtype=torch.float64), persistent=False)

    def gates(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(gates (B, T, H) scaled by H, routed selection (B, T, n_routed) of 0/1, routed probabilities)."""
        logits = self.router(x).float()
        routed = logits[..., self.shared:self.num_heads]
        probs = torch.softmax(routed, dim=-1)
        chosen = torch.zeros_like(probs).scatter(-1, routed.topk(self.top_k, dim=-1).indices, 1.0)
        gates = probs * chosen
        if self.shared:
            alpha = torch.softmax(logits[..., self.num_heads:], dim=-1)
            shared = torch.softmax(logits[..., :self.shared], dim=-1)
            gates = torch.cat((alpha[..., :1] * shared, alpha[..., 1:] * gates), dim=-1)
        return gates * self.num_heads, chosen, probs

    def forward(self, x: Tensor) -> Tensor:
        bsz, seqlen, _ = x.shape
        q = self.c_q(x).reshape(bsz, seqlen, self.num_heads, self.head_dim)
        k = self.c_k(x).reshape(bsz, seqlen, self.num_kv_heads, self.head_dim)
        v = self.c_v(x).reshape(bsz, seqlen, self.num_kv_heads, self.head_dim)
        heads = self.attend(q, k, v).view(bsz, seqlen, self.num_heads, self.head_dim)
        gates, chosen, probs = self.gates(x)
        y = (heads * gates.to(heads.dtype)[..., None]).reshape(bsz, seqlen, -1)
        if self.training:  # read by the model after the blocks: a training-only term, never part of the logits
            self.balance_loss = self.routed / self.top_k * (chosen.mean((0, 1)) * probs.mean((0, 1))).sum()
        else:
            self.eval_load += chosen.sum((0, 1)).double()
            self.eval_tokens += bsz * seqlen
        return self.proj(y)

    def train(self, mode: bool = True):
        if not mode:  # each evaluation starts by switching to eval mode: count its tokens afresh
            self.eval_load.zero_()
            self.eval_tokens.zero_()
        return super().train(mode)


class MoHGPT(GPT):
    def __init__(self, c: MoHConfig):
        super().__init__(c, blocks=[Block(c, attn=MoHAttention(c)) for _ in range(c.num_layers)])

    def forward(self, input_ids: Tensor):
        logits = super().forward(input_ids)
        if not self.training:
            return logits
        balance = torch.stack([block.attn.balance_loss for block in self.blocks]).mean()
        for block in self.blocks:
            block.attn.balance_loss = None  # a graph held by the module would block deepcopy (and keep memory alive)
        return logits, {"head_balance": self.config.balance_weight * balance}

    def metrics(self) -> dict[str, float]:
        out, active = {}, []
        for layer, block in enumerate(self.blocks):
            attn = block.attn
            tokens = attn.eval_tokens.item()
            if not tokens:
                return {}
            loads = (attn.eval_load / tokens).tolist()
            out.update({f"head_load_l{layer}_h{attn.shared + i}": load for i, load in enumerate(loads)})
            active.append(attn.shared + sum(loads))
        mean_active = sum(active) / len(active)
        return {"mean_active_heads_per_token": mean_active,
                "sparse_skippable_head_fraction": 1.0 - mean_active / self.config.num_heads, **out}

    def param_groups(self, c: MoHConfig) -> list[ParamGroup]:
        """The baseline's split, except that the routers (one row per head: vectors in spirit, as MoE routers
        are usually trained) go to Adam rather than Muon."""
        routers = [block.attn.router.weight for block in self.blocks]
        return default_param_groups(self, c, ParamGroup("router", routers, "adam", c.scalar_lr))


register("moh", config=MoHConfig, build=MoHGPT, doc=__doc__, presets={
    "h6of8": {"shared_ratio": 0.25, "active_ratio": 0.75},  # 2 shared + top-4 of 6 routed (the default)
    "h4of8": {"shared_ratio": 0.25, "active_ratio": 0.5},  # 2 shared + top-2 of 6 routed: half the heads
})
