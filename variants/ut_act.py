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

from dataclasses import dataclass

from torch import Tensor

from harness import recurrence
from harness.config import param
from harness.model import GPT, Block, GPTConfig
from harness.recurrence import ACT, Halting, StepCount, StepVectors
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
        self.step_emb = StepVectors(c.max_ponder_steps, c.model_dim)
        self.halting = Halting(c.model_dim, c.max_ponder_steps)
        self.eval_steps = StepCount()

    def forward(self, input_ids: Tensor):
        c = self.config
        x0 = self.embed(input_ids)
        h, act = x0, ACT(x0, c.max_ponder_steps, c.act_epsilon)
        for n in range(c.max_ponder_steps):
            h = act.keep(h, self.blocks[0](self.step_emb(h, n), x0))
            act.update(h, self.halting(h), n)
        logits = self.logits(act.out)
        if self.training:
            return logits, {"ponder": c.ponder_weight * act.ponder_cost()}
        self.eval_steps.add(act.steps)
        return logits

    def metrics(self) -> dict[str, float]:
        mean = self.eval_steps.mean()
        return {} if mean is None else {"mean_steps_per_token": mean}

    # Step embeddings and the halting row train with Adam, not Muon.
    param_groups = recurrence.param_groups


register("ut_act", config=UTConfig, build=UniversalTransformer, doc=__doc__,
         presets={"steps12": {"max_ponder_steps": 12}, "steps20": {"max_ponder_steps": 20}})
