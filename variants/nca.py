"""nca — block weights grown by a neural cellular automaton from a seeded grid; only the update rule is stored

Every block matrix is a 2-D grid of cells, one cell per weight, each with `channels` state channels drawn from a
stored seed. For `nca_steps` steps each cell perceives its 3×3 neighbourhood (identity, Sobel-x, Sobel-y and
Laplacian filters per channel) and a per-cell MLP adds a residual update scaled by 1/nca_steps, so the step count
sets the resolution of the growth rather than its length; the fixed filters and the MLP's first layer are fused
into one 3×3 conv. Channel 0, divided by its RMS and times a learned per-matrix gain, is the weight. After
Mordvintsev et al., "Growing Neural Cellular Automata" (Distill 2020), applied to weights as in HyperNCA (Najarro
et al., 2022). Stored: one rule per matrix kind (q, k, v, o, fc, proj; ~1.6k numbers each at the default widths),
a code vector and a gain per matrix, the tied embedding and the control tensors, ~0.55M numbers in all; the grids
are regenerated. The growth runs once per optimizer step, checkpointed per step (at full size ~26 GB of fp32
grid states live through the step). Expected effect: a tiny artifact and a much worse loss than the baseline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from harness.config import param
from harness.hooks import GeneratedWeights, generated_blocks, seeded_generator
from harness.model import GPT, GPTConfig, block_matrix_shapes
from harness.optim import ParamGroup
from harness.registry import register


@dataclass(frozen=True)
class NCAConfig(GPTConfig):
    generator_seed: int = param(1234, "seed of the initial cell grids (regenerated from it, never stored; --seed "
                                "is the training seed)", low=0, high=2**31 - 1)
    nca_steps: int = param(50, "growth steps of the automaton per weight generation", low=1, high=1000)
    channels: int = param(8, "state channels per cell (one cell per weight); channel 0 is the weight", low=1,
                          high=64)
    hidden: int = param(32, "hidden width of the per-cell update MLP", low=1, high=1024)
    rule_lr: float = param(0.01, "Adam learning rate of the update rules and per-matrix codes", low=0.0,
                           high=10.0)



def perception_filters() -> Tensor:
    """Identity, Sobel x/y and Laplacian 3×3 filters: (4, 3, 3)."""
    identity = torch.zeros(3, 3)
    identity[1, 1] = 1.0
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8
    laplace = torch.tensor([[1.0, 2.0, 1.0], [2.0, -12.0, 2.0], [1.0, 2.0, 1.0]]) / 16
    return torch.stack((identity, sobel, sobel.T, laplace))


class Rule(nn.Module):
    """The update rule shared by one kind's matrices (all layers' q, say), told apart by a learned code each."""

    def __init__(self, c: NCAConfig, fan_in: int, zero_gain: bool):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(c.hidden, c.channels, 4) / math.sqrt(4 * c.channels))
        self.b1 = nn.Parameter(torch.zeros(c.hidden))
        self.w2 = nn.Parameter(torch.zeros(c.channels, c.hidden, 1, 1))  # zero: the grid starts as it was drawn
        self.code = nn.Parameter(torch.zeros(c.num_layers, c.hidden))
        # Weight = gain/sqrt(fan_in) · unit-RMS read-out: 1/sqrt(3) matches nn.Linear's init RMS, 0 the baseline's
        # zero-initialised output projections. In these units Adam's step moves a gain as Muon moves a matrix.
        self.gain = nn.Parameter(torch.full((c.num_layers,), 0.0 if zero_gain else 3 ** -0.5))
        self.fan_in, self.dt = fan_in, 1.0 / c.nca_steps

    def kernel(self, filters: Tensor) -> Tensor:
        """Perception (fixed filters per channel) then the first 1×1 layer, fused into one 3×3 conv kernel."""
        return torch.einsum("hcf,fij->hcij", self.w1, filters)

    def step(self, state: Tensor, kernel: Tensor) -> Tensor:
        hidden = torch.relu(F.conv2d(state, kernel, self.b1, padding=1) + self.code[:, :, None, None])
        return state + self.dt * F.conv2d(hidden, self.w2)

    def read_out(self, state: Tensor) -> Tensor:
        w = state[:, 0]
        return w * torch.rsqrt(w.square().mean((1, 2), keepdim=True) + 1e-12) * (self.gain / math.sqrt(
            self.fan_in))[:, None, None]


class CellularWeights(GeneratedWeights):
    """Grows every block matrix once per optimizer step: {kind: (num_layers, out, in)}."""

    def __init__(self, c: NCAConfig):
        super().__init__()
        self.steps = c.nca_steps
        self.rules = nn.ModuleDict()
        for kind, (out, fan_in) in block_matrix_shapes(c).items():
            self.rules[kind] = Rule(c, fan_in, zero_gain=kind in ("o", "proj"))
            grid = torch.randn(c.num_layers, c.channels, out, fan_in,
                               generator=seeded_generator(c.generator_seed, "grid_" + kind))
            self.register_buffer("grid_" + kind, grid, persistent=False)
        self.register_buffer("filters", perception_filters(), persistent=False)

    def generate(self) -> dict[str, Tensor]:
        out = {}
        # The growth runs in fp32 in training (outside autocast) and must give the same weights in evaluation.
        with torch.autocast(self.filters.device.type, enabled=False):
            for kind, rule in self.rules.items():
                state, kernel = getattr(self, "grid_" + kind), rule.kernel(self.filters)
                for _ in range(self.steps):
                    # Keep only each step's grid for the backward pass, not the 2·hidden maps inside the step.
                    state = checkpoint(rule.step, state, kernel, use_reentrant=False) \
                        if torch.is_grad_enabled() else rule.step(state, kernel)
                out[kind] = rule.read_out(state)
        return out


class NCAGPT(GPT):
    def __init__(self, c: NCAConfig):
        gen = CellularWeights(c)
        super().__init__(c, generated_blocks(c, gen.weights))
        self.gen = gen

    def param_groups(self, c: NCAConfig) -> list[ParamGroup]:
        rule = [p for name, p in self.gen.named_parameters() if not name.endswith("gain")]
        taken = {id(p) for p in rule} | {id(self.tok_emb.weight)}
        rest = [p for p in self.parameters() if id(p) not in taken]
        return [ParamGroup("embed", [self.tok_emb.weight], "adam", c.tied_embed_lr),
                ParamGroup("rule", rule, "adam", c.rule_lr), ParamGroup("scalar", rest, "adam", c.scalar_lr)]


register("nca", config=NCAConfig, build=NCAGPT, presets={"steps50": {"nca_steps": 50}}, doc=__doc__)
