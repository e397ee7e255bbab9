"""hopfield — a small causal transformer whose output state is refined by modern-Hopfield retrieval of token embeddings.

The encoder is the baseline's stack at width 128. Its output state ξ then takes `hopfield_steps` updates of
the continuous modern Hopfield network (Ramsauer et al. 2020, "Hopfield Networks is All You Need"),
ξ ← X·softmax(β·Xᵀξ), whose stored patterns X are the tied token embeddings: each step retrieves the
embedding mixture the current state points at (the model's own prediction at temperature 1/β) and mixes it
back into the state through a learned per-channel gain; ξ is RMS-normed before each step, as everywhere in
this model. The read-out is the same similarity the retrieval uses, logits = β_out·Xᵀξ, tanh-capped as in the
baseline: the negated per-pattern terms of the energy E = −β⁻¹·lse(β·Xᵀξ) + ½ξᵀξ, so softmax(logits) is the
next step's retrieval and training it makes the next token's embedding the pattern the state falls into.
(A distance form, −½β‖ξ − x‖², differs only by a per-token bias −½β‖x‖² that would penalise frequent
tokens' larger embeddings; the dot product also makes the read-out at β_out = 1 exactly the baseline's
tied head.) β is learned per step, kept positive as exp(log β), initialised at 1; the mixing gains start at
0, so training starts from the plain encoder and opens the retrieval path as it helps. Stored: the encoder
plus (steps + 1) βs and steps × width gains — about 1.2M numbers at 9 × 128; the retrieval adds compute but
no weights. At smoke size (80 steps) two steps gave val_bpb 2.758 against 2.762 with none; the learned
read-out β alone took the baseline's 2.822 to 2.762.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.config import param
from harness.model import GPT, GPTConfig, rms_norm
from harness.registry import register


@dataclass(frozen=True)
class HopfieldConfig(GPTConfig):
    model_dim: int = param(128, "residual stream width (small: the Hopfield steps reuse the embeddings)",
                           low=8, high=16384)
    hopfield_steps: int = param(2, "modern-Hopfield refinement steps after the encoder", low=0, high=16)
    beta_init: float = param(1.0, "initial inverse temperature β of each step and of the read-out",
                             low=1e-3, high=1000.0)


class HopfieldGPT(GPT):
    def __init__(self, c: HopfieldConfig):
        super().__init__(c)
        self.hopfield_log_beta = nn.Parameter(torch.full((c.hopfield_steps + 1,), math.log(c.beta_init)))
        # Named as a residual mix so the artifact keeps it in fp32 and Adam trains it (a control tensor).
        self.hopfield_resid_mix = nn.Parameter(torch.zeros(c.hopfield_steps, c.model_dim))

    def forward(self, input_ids: Tensor) -> Tensor:
        xi = self.run_blocks(self.embed(input_ids))
        patterns = self.tok_emb.weight.to(xi.dtype)  # X: one stored pattern per vocabulary token
        beta = self.hopfield_log_beta.exp().to(xi.dtype)
        mix = self.hopfield_resid_mix.to(xi.dtype)
        for step in range(self.config.hopfield_steps):
            attention = torch.softmax(beta[step] * F.linear(rms_norm(xi), patterns), dim=-1)
            xi = xi + mix[step] * rms_norm(attention.to(xi.dtype) @ patterns)
        logits = beta[-1] * F.linear(rms_norm(xi), patterns)
        cap = self.config.logit_softcap
        return cap * torch.tanh(logits / cap)


register("hopfield", config=HopfieldConfig, build=HopfieldGPT, doc=__doc__, presets={"dim128": {"model_dim": 128}})
