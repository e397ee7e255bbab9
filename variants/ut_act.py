"""ut_act — one shared block applied up to max_ponder_steps times, each token halting on its own (ACT).

A universal transformer (Dehghani et al. 2019) with per-token adaptive computation time (Graves 2016): the
harness Block is applied repeatedly, a learned step embedding added before each application. After each step
a halting unit gives p_n; a token halts at the first step where its summed p would reach 1 − act_epsilon, and
that step gets the remainder R = 1 − (earlier p). Its output is the halting-weighted sum of its states; once
halted its state is frozen, though later tokens still attend to it. Training adds the ponder cost
ponder_weight · mean(N + R). All steps run densely under masks (no data-dependent exit, so it compiles);
metrics() reports the mean steps per token of the last evaluation. --num-layers is unused: depth is
--max-ponder-steps. Stored: one block, the step embeddings and the halting unit, about 1/9 of the baseline's
numbers; computed: every step runs densely, so 12 applications cost 12/9 ≈ 1.33× the baseline's block compute
per token (20 cost 2.2×). Expected: worse than the baseline per FLOP, far smaller.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from harness.config import param
from harness.model import GPT, Block, CastedLinear, GPTConfig, rms_norm
from harness.optim import ParamGroup, default_param_groups
from harness.registry import register


@dataclass(frozen=True)
class UTConfig(GPTConfig):
    max_ponder_steps: int = param(12, "most applications of the shared block per token (--num-layers is unused)",
                                  low=1, high=128)
    act_epsilon: float = param(0.01, "a token halts once its summed halting probability reaches 1 − this",
                               low=0.0, high=0.5)
    ponder_weight: float = param(0.01, "weight τ of the training-only ponder cost τ·mean(N + R)", low=0.0)


class UniversalTransformer(GPT):
    def __init__(self, c: UTConfig):
        super().__init__(c, blocks=[Block(c)], order=[0])
        del self.skip_weights  # one shared block: no U-Net skips
        self.step_emb = nn.Parameter(torch.zeros(c.max_ponder_steps, c.model_dim))
        self.halt = CastedLinear(c.model_dim, 1, zero_init=True)
        # Initial p = 1 / (2·(steps − 1)): every token runs all steps and the last state carries about half the
        # output weight, so training starts from the deepest computation and the ponder cost trims it.
        p0 = 1.0 / (2.0 * max(c.max_ponder_steps - 1, 1))
        self.halt_bias = nn.Parameter(torch.tensor(math.log(p0 / (1.0 - p0))))
        self.register_buffer("eval_steps", torch.zeros((), dtype=torch.float64), persistent=False)
        self.register_buffer("eval_tokens", torch.zeros((), dtype=torch.float64), persistent=False)

    def forward(self, input_ids: Tensor):
        c = self.config
        x0 = self.embed(input_ids)
        h, out = x0, torch.zeros_like(x0)
        running = torch.ones(x0.shape[:2], dtype=torch.bool, device=x0.device)
        summed_p = torch.zeros(x0.shape[:2], device=x0.device)
        steps, remainder = torch.zeros_like(summed_p), torch.zeros_like(summed_p)
        for n in range(c.max_ponder_steps):
            step = self.blocks[0](h + self.step_emb[n].to(h.dtype), x0)
            h = torch.where(running[..., None], step, h)  # halted tokens keep their state
            p = torch.sigmoid(self.halt(rms_norm(h)).squeeze(-1).float() + self.halt_bias)
            halts = running & ((summed_p + p >= 1.0 - c.act_epsilon) | (n == c.max_ponder_steps - 1))
            weight = torch.where(halts, 1.0 - summed_p, torch.where(running, p, 0.0))
            out = out + weight[..., None].to(h.dtype) * h
            remainder = torch.where(halts, 1.0 - summed_p, remainder)
            steps = steps + running.float()
            summed_p = summed_p + torch.where(running & ~halts, p, 0.0)
            running = running & ~halts
        logits = self.logits(out)
        if self.training:
            return logits, {"ponder": c.ponder_weight * (steps + remainder).mean()}
        with torch.no_grad():
            self.eval_steps += steps.sum().double()
            self.eval_tokens += steps.numel()
        return logits

    def train(self, mode: bool = True):
        if not mode:  # each evaluation starts by switching to eval mode: count its tokens afresh
            self.eval_steps.zero_()
            self.eval_tokens.zero_()
        return super().train(mode)

    def metrics(self) -> dict[str, float]:
        tokens = self.eval_tokens.item()
        return {"mean_steps_per_token": self.eval_steps.item() / tokens} if tokens else {}

    def param_groups(self, c: UTConfig) -> list[ParamGroup]:
        """The baseline's split, except that the step embeddings and the halting row (2-D but vectors in
        spirit) train with Adam rather than Muon."""
        vectors = [self.step_emb, self.halt.weight]
        return default_param_groups(self, c, ParamGroup("act_vectors", vectors, "adam", c.scalar_lr))


register("ut_act", config=UTConfig, build=UniversalTransformer, doc=__doc__,
         presets={"steps12": {"max_ponder_steps": 12}, "steps20": {"max_ponder_steps": 20}})
