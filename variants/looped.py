"""looped — k distinct blocks run as a loop body L times: effective depth k·L for the bytes of k blocks.

A looped transformer (Giannou et al. 2023, "Looped transformers as programmable computers", arXiv 2301.13196;
Saunshi et al. 2025, "Reasoning with latent thoughts: on the power of looped transformers", arXiv 2502.17416):
`unique_layers` baseline blocks applied in order, the whole body repeated `loops` times with shared weights. The
state starts at zero and every loop begins with input re-injection and a loop embedding: s ← s + g_i ⊙ x0 + e_i,
x0 the normed token embedding, g_i a learned per-loop, per-channel gate (ones at init, so loop 0 sees x0 as the
baseline does) and e_i a learned loop-step vector (zeros at init). No U-Net skips: the depth is a loop.

`halting act` adds per-token adaptive computation time over the loops (as ut_act over its steps; the halting
unit, the halting-weighted output and the ponder cost are harness/recurrence.py's): a halting unit after each
loop, a token halts once its summed p reaches 1 − act_epsilon and then keeps its state (later tokens still
attend to it), the training-only ponder cost is ponder_weight · mean(N + R). Every loop runs densely under masks,
so nothing is saved in compute; metrics() reports the mean loops per token of the last evaluation and the
fraction of loop applications an early-exit kernel could skip. --num-layers is unused: depth is k·L.

Stored at full size: k blocks (k3x3 ≈ 6.0M numbers, a third of the baseline's; k2x6_act ≈ 4.2M) plus 2·L·d loop
vectors; compute per token is k·L block applications against the baseline's 9: k3x3 costs the same, k2x6_act
12/9 ≈ 1.33×, and the per-loop re-injection and halting are vector work. The loops are sequential, as the
baseline's layers are, so speed on a GPU follows the effective depth. Expected: near the baseline's val_bpb per
step at a third of the bytes; the freed bytes could go to width (--model-dim).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from harness import recurrence
from harness.config import param
from harness.model import GPT, Block, GPTConfig
from harness.recurrence import ACT, Halting, StepCount, StepVectors
from harness.registry import register


@dataclass(frozen=True)
class LoopedConfig(GPTConfig):
    unique_layers: int = param(3, "distinct blocks k in the loop body (--num-layers is unused)", low=1, high=64)
    loops: int = param(3, "times L the loop body runs: effective depth k·L", low=1, high=64)
    halting: str = param("none", "none: every token runs every loop; act: per-token adaptive computation time "
                         "over the loops", choices=("none", "act"))
    act_epsilon: float = param(0.01, "with --halting act, a token halts once its summed halting probability "
                               "reaches 1 − this", low=0.0, high=0.5)
    ponder_weight: float = param(0.01, "with --halting act, weight τ of the training-only ponder cost "
                                 "τ·mean(N + R)", low=0.0)


class LoopedGPT(GPT):
    def __init__(self, c: LoopedConfig):
        super().__init__(c, blocks=[Block(c) for _ in range(c.unique_layers)])
        del self.skip_weights  # the depth is a loop: no U-Net skips
        self.loop_emb = StepVectors(c.loops, c.model_dim)
        self.inject = StepVectors(c.loops, c.model_dim, init=1.0)  # the re-injection gates g_i
        if c.halting == "act":
            self.halting = Halting(c.model_dim, c.loops)
            self.eval_loops = StepCount()

    def forward(self, input_ids: Tensor):
        c = self.config
        x0 = self.embed(input_ids)
        state = torch.zeros_like(x0)
        act = ACT(x0, c.loops, c.act_epsilon) if c.halting == "act" else None
        for i in range(c.loops):
            x = self.loop_emb(state + self.inject.at(i, x0.dtype) * x0, i)
            for block in self.blocks:
                x = block(x, x0)
            if act is None:
                state = x
            else:
                state = act.keep(state, x)
                act.update(state, self.halting(state), i)
        if act is None:
            return self.logits(state)
        logits = self.logits(act.out)
        if self.training:
            return logits, {"ponder": c.ponder_weight * act.ponder_cost()}
        self.eval_loops.add(act.steps)
        return logits

    def metrics(self) -> dict[str, float]:
        mean = self.eval_loops.mean() if self.config.halting == "act" else None
        if mean is None:
            return {}
        return {"mean_loops_per_token": mean, "skippable_loop_fraction": 1.0 - mean / self.config.loops}

    # Loop embeddings, re-injection gates and the halting row train with Adam, not Muon.
    param_groups = recurrence.param_groups


register("looped", config=LoopedConfig, build=LoopedGPT, doc=__doc__, presets={
    "k3x3": {"unique_layers": 3, "loops": 3},
    "k2x6_act": {"unique_layers": 2, "loops": 6, "halting": "act"},
})
