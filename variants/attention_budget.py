"""attention_budget — each token gets a learned compute budget; a layer whose estimated cost it cannot pay is skipped.

The catalogue's "Attention Budget" (an original idea; a cousin of mixture-of-depths, arXiv 2404.02258, without
its fixed top-k): a token starts with a budget b (a learned scalar, plus a learned linear function of its
embedding with `budget_from_embedding`). Before block l a cost estimator gives c_l = sigmoid(w_l·RMSNorm(x) +
β_l); the token runs the block only if b > c_l, and then pays c_l; otherwise it keeps its state. Per token,
from its own state: causal as the blocks are. Training uses a straight-through gate (the hard decision
forward, the gradient of sigmoid((b − c)/τ) backward) and a training-only penalty `compute_weight` × mean soft
gate, so the budget goes where it pays. At init c = 0.5 and b = num_layers/2 + 0.5: every block is paid for.
metrics(): the fraction of token-layers computed in the last evaluation, overall and per layer.

Dense under masks: every block runs on every token and the gate selects, so nothing is saved (168.3 MFLOP per
token for a training step, the baseline's; 291 KiB of saved activations per token against 263). A skipped
token still offers its key and value to the others; a sparse kernel would skip its query, attention output, o
projection and MLP, about 80% of its block: 1 − computed_fraction says how often. Stored: the baseline plus
num_layers·(d + 1) + 1 numbers, 17,064,530 (4,916,040 artifact bytes at init; span: 17,064,602).

`adaptive_span` (Sukhbaatar et al. 2019, arXiv 1905.07799): a learned span z per head in [0, max_span] weights
distance d by m(d) = clamp((R + z − d)/R, 0, 1) (R = `span_ramp`), as an additive bias log m (−inf where m =
0) on the scores, which renormalises exactly as the paper's multiplicative mask; a training-only L1 penalty
`span_weight` × mean z / max_span shrinks the spans from max_span. `window` > 0: banded causal attention over
the last `window` positions, every `global_every`-th layer attending fully (the 3rd, 6th, 9th): at 1024 tokens
a window of 128 keeps 23% of the causal score pairs, all computed here. Both pass SDPA an explicit mask, which
flash attention cannot take: the run records the fallback (the efficient kernel on a GPU, whose gradient for
the span's bias is a (batch, heads, T, T) tensor per layer). Expected: the baseline's val_bpb with fewer
token-layers computed; spans and windows near the baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.config import param
from harness.model import GPT, Block, CausalSelfAttention, GPTConfig, rms_norm
from harness.optim import ParamGroup, default_param_groups
from harness.registry import register


@dataclass(frozen=True)
class BudgetConfig(GPTConfig):
    budget_init: float = param(0.0, "initial budget of a token (0: num_layers/2 + 0.5, enough for every block "
                               "at the initial cost 0.5)", low=0.0, high=1e4)
    budget_from_embedding: bool = param(False, "add a learned linear function of the token embedding to its budget")
    gate_temperature: float = param(0.25, "τ of the soft gate sigmoid((budget − cost)/τ) that the hard skip "
                                    "decision takes its gradient from", low=1e-3, high=100.0)
    compute_weight: float = param(0.05, "weight of the training-only penalty on the mean soft gate", low=0.0)
    adaptive_span: bool = param(False, "learn an attention span per head (Sukhbaatar et al. 2019)")
    max_span: int = param(1024, "largest adaptive span, in positions", low=1, high=65536)
    span_ramp: int = param(32, "width R of the adaptive span's soft ramp, in positions", low=1, high=65536)
    span_weight: float = param(0.02, "weight of the training-only L1 penalty on mean span / max_span", low=0.0)
    window: int = param(0, "sliding-window width of local layers (0: every layer attends to all earlier "
                        "positions)", low=0, high=65536)
    global_every: int = param(3, "with a window, every this-many-th layer attends fully (0: none)", low=0, high=256)


class BudgetAttention(CausalSelfAttention):
    """The baseline's attention, with a banded mask (window) and/or a learned soft span per head."""

    def __init__(self, c: BudgetConfig, layer: int):
        super().__init__(c)
        is_global = c.global_every > 0 and (layer + 1) % c.global_every == 0
        self.window = 0 if is_global else c.window
        self.max_span, self.ramp = c.max_span, c.span_ramp
        self.span = nn.Parameter(torch.ones(c.num_heads)) if c.adaptive_span else None  # z / max_span

    def spans(self) -> Tensor:
        return self.max_span * self.span.clamp(0.0, 1.0)

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if not self.window and self.span is None:
            return super().attend(q, k, v)
        bsz, seqlen = q.shape[:2]
        q, k, v = self.heads_first(q, k, v)
        pos = torch.arange(seqlen, device=q.device)
        distance = pos[:, None] - pos[None, :]
        mask = (distance >= 0) & (distance < (self.window or seqlen))  # causal, banded with a window
        if self.span is not None:  # log m; m = 0 is −inf, and the clamp keeps log's gradient finite there
            m = ((self.ramp + self.spans()[:, None, None] - distance) / self.ramp).clamp(0.0, 1.0)
            mask = torch.where(mask & (m > 0), m.clamp(min=1e-6).log(), float("-inf")).to(q.dtype)[None]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.num_kv_heads != self.num_heads)
        return y.transpose(1, 2).reshape(bsz, seqlen, -1)


class AttentionBudgetGPT(GPT):
    def __init__(self, c: BudgetConfig):
        super().__init__(c, blocks=[Block(c, attn=BudgetAttention(c, i)) for i in range(c.num_layers)])
        self.budget = nn.Parameter(torch.tensor(c.budget_init or c.num_layers / 2 + 0.5))
        self.budget_embed = nn.Parameter(torch.zeros(c.model_dim)) if c.budget_from_embedding else None
        self.cost_weight = nn.Parameter(torch.zeros(c.num_layers, c.model_dim))
        self.cost_bias = nn.Parameter(torch.zeros(c.num_layers))
        self.register_buffer("eval_computed", torch.zeros(c.num_layers, dtype=torch.float64), persistent=False)
        self.register_buffer("eval_tokens", torch.zeros((), dtype=torch.float64), persistent=False)

    def forward(self, input_ids: Tensor):
        c = self.config
        x = x0 = self.embed(input_ids)
        budget = self.budget.float().expand(x.shape[:2])
        if self.budget_embed is not None:
            budget = budget + x0.float() @ self.budget_embed.float()
        skips, n_enc, hard_gates, soft_gates = [], len(self.order) // 2, [], []
        for depth, i in enumerate(self.order):
            if depth >= n_enc and skips:
                x = x + self.skip_weights[depth - n_enc].to(x.dtype) * skips.pop()
            cost = torch.sigmoid(rms_norm(x).float() @ self.cost_weight[i].float() + self.cost_bias[i])
            gate = hard = (budget > cost).float()
            if self.training:  # straight-through: the hard decision forward, the soft gate's gradient backward
                soft = torch.sigmoid((budget - cost) / c.gate_temperature)
                gate = hard + soft - soft.detach()
                soft_gates.append(soft)
            budget = budget - gate * cost
            y = self.blocks[i](x, x0)
            x = torch.where(hard[..., None] > 0, y, x) + (gate - hard)[..., None].to(x.dtype) * (y - x)
            hard_gates.append(hard)
            if depth < n_enc:
                skips.append(x)
        logits = self.logits(x)
        if self.training:
            extra = {"compute": c.compute_weight * torch.stack(soft_gates).mean()}
            if c.adaptive_span:
                spans = torch.cat([b.attn.span.clamp(0.0, 1.0) for b in self.blocks])
                extra["span"] = c.span_weight * spans.mean()
            return logits, extra
        with torch.no_grad():
            self.eval_computed += torch.stack(hard_gates).sum(dim=(1, 2)).double()
            self.eval_tokens += input_ids.numel()
        return logits

    def train(self, mode: bool = True):
        if not mode:  # each evaluation starts by switching to eval mode: count its tokens afresh
            self.eval_computed.zero_()
            self.eval_tokens.zero_()
        return super().train(mode)

    def metrics(self) -> dict[str, float]:
        if not (tokens := self.eval_tokens.item()):
            return {}
        per_layer = (self.eval_computed / tokens).tolist()
        out = {"computed_fraction": sum(per_layer) / len(per_layer)}
        out.update({f"computed_fraction_layer{i}": f for i, f in enumerate(per_layer)})
        if self.config.adaptive_span:
            out.update({f"mean_span_layer{i}": b.attn.spans().mean().item() for i, b in enumerate(self.blocks)})
        return out

    def param_groups(self, c: BudgetConfig) -> list[ParamGroup]:
        """The baseline's split, except that the cost estimators (one row per layer, vectors in spirit) train
        with Adam rather than Muon."""
        return default_param_groups(self, c, ParamGroup("cost", [self.cost_weight], "adam", c.scalar_lr))


register("attention_budget", config=BudgetConfig, build=AttentionBudgetGPT, doc=__doc__, presets={
    "budget": {}, "span": {"adaptive_span": True}, "swa": {"window": 128, "global_every": 3}})
