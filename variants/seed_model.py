"""seed_model — block weights θ = θ₀ + P·φ: a seeded init plus a hashed projection of a few thousand trained numbers

Training in a random subspace, as in Li et al., "Measuring the Intrinsic Dimension of Objective Landscapes"
(ICLR 2018), with the projection P made by the hashing trick of HashedNets (Chen et al., ICML 2015) so that it
costs no memory to store: every block matrix weight is its baseline init (θ₀, drawn from `generator_seed`; zero
for the o/proj output projections, as the baseline) plus the sum of `hash_terms` signed entries of φ at seeded
random positions, scaled per tensor so that a unit-RMS φ moves a matrix by its init RMS. φ (`phi_dim` numbers)
starts at zero, so the model starts exactly at the baseline's init. Stored: φ, the tied embedding (an ordinary
parameter, not in the subspace) and the control tensors, ~0.55M numbers; θ₀ and P are regenerated from
`generator_seed` (its own name: `--seed` is the training seed, which draws the other parameters' init).
Expected effect: a tiny artifact and a far worse loss than the baseline, since ~2k numbers steer 17M weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from harness.config import param
from harness.hooks import GeneratedWeights, generated_blocks, seeded_generator
from harness.model import GPT, GPTConfig, block_matrix_shapes
from harness.optim import ParamGroup
from harness.registry import register


@dataclass(frozen=True)
class SeedConfig(GPTConfig):
    generator_seed: int = param(1234, "seed of θ₀ and of the hashed projection (regenerated from it, never "
                                "stored; --seed is the training seed)", low=0, high=2**31 - 1)
    phi_dim: int = param(2048, "dimension of the trained vector φ that all block matrices are projected from",
                         low=1, high=2**24)
    hash_terms: int = param(4, "signed φ entries summed into each weight (nonzeros per row of P)", low=1, high=64)
    phi_lr: float = param(0.08, "Adam learning rate of φ: about the fraction of its init RMS a weight moves per "
                          "step", low=0.0, high=10.0)


class SubspaceWeights(GeneratedWeights):
    """{kind: (num_layers, out, in)} = θ₀ + scale · Σ_terms ±φ[hashed index], once per optimizer step."""

    def __init__(self, c: SeedConfig):
        super().__init__()
        self.phi = nn.Parameter(torch.zeros(c.phi_dim))
        self.zero_init = ("o", "proj")
        self.scale = {}
        for kind, (out, fan_in) in block_matrix_shapes(c).items():
            shape = (c.num_layers, out, fan_in)
            bound = 1 / math.sqrt(fan_in)  # nn.Linear's default init: U(-bound, bound), RMS bound/sqrt(3)
            self.scale[kind] = bound / math.sqrt(3 * c.hash_terms)
            if kind not in self.zero_init:
                u = torch.rand(shape, generator=seeded_generator(c.generator_seed, "theta0_" + kind))
                self.register_buffer("theta0_" + kind, (2 * u - 1) * bound, persistent=False)
            # An index into [φ, -φ] carries the sign too. int32: 4 bytes × hash_terms per weight (~264 MB at the
            # default 17M weights × 4 terms), far less than storing or regenerating a dense P.
            index = torch.randint(0, 2 * c.phi_dim, (c.hash_terms, *shape), dtype=torch.int32,
                                  generator=seeded_generator(c.generator_seed, "index_" + kind))
            self.register_buffer("index_" + kind, index, persistent=False)

    def generate(self) -> dict[str, Tensor]:
        table = torch.cat((self.phi, -self.phi))
        out = {}
        for kind, scale in self.scale.items():
            index = getattr(self, "index_" + kind)
            delta = table.index_select(0, index.flatten()).view(index.shape).sum(0) * scale
            out[kind] = delta if kind in self.zero_init else getattr(self, "theta0_" + kind) + delta
        return out


class SeedGPT(GPT):
    def __init__(self, c: SeedConfig):
        gen = SubspaceWeights(c)
        super().__init__(c, generated_blocks(c, gen.weights))
        self.gen = gen

    def param_groups(self, c: SeedConfig) -> list[ParamGroup]:
        # Adam on φ: its step is ~phi_lr per entry, and each weight sums hash_terms of them with random signs, so
        # a weight moves ~phi_lr × its init RMS per step; 0.08 is about the baseline's Muon rate (0.04 × an
        # orthogonal update's entry RMS 1/sqrt(512) ≈ 7% of a 512-wide matrix's init RMS per step).
        taken = {id(self.gen.phi), id(self.tok_emb.weight)}
        rest = [p for p in self.parameters() if id(p) not in taken]
        return [ParamGroup("phi", [self.gen.phi], "adam", c.phi_lr),
                ParamGroup("embed", [self.tok_emb.weight], "adam", c.tied_embed_lr),
                ParamGroup("scalar", rest, "adam", c.scalar_lr)]


register("seed_model", config=SeedConfig, build=SeedGPT, presets={"d2048": {"phi_dim": 2048}}, doc=__doc__)
