"""siren — every block weight is the value of one sine network at its (row, column, layer, type) coordinate

An implicit neural representation of the weights: a SIREN (Sitzmann et al. 2020, "Implicit Neural
Representations with Periodic Activation Functions": sine activations, ω₀ on the first layer, their uniform
init) maps a weight's row and column (normalised to [-1, 1]), its layer (likewise) and its matrix type
(q, k, v, o, fc, proj, as a one-hot code) to the weight. Each generated matrix is divided by its RMS and scaled
by a learned per-(layer, type) gain, zero for o/proj so blocks start as the baseline's do. Stored: the SIREN
(~134k numbers at hidden 256, depth 3), the gains, the tied embedding and the control tensors; the coordinates
are rebuilt from the config and all ~16.5M block weights regenerated once per optimizer step, one matrix at
a time under activation checkpointing. Expected effect: a tiny artifact and a much worse loss than the
baseline; the question is how much of a weight matrix a smooth function of its indices can express.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from harness.config import param
from harness.errors import UserError
from harness.hooks import GeneratedWeights, generated_blocks
from harness.model import GLU_ACTIVATIONS, GPT, GPTConfig, block_matrix_shapes
from harness.optim import ParamGroup
from harness.registry import register

KINDS = ("q", "k", "v", "o", "fc", "proj")
ZERO_INIT = ("o", "proj")  # the baseline zero-inits these; their gains start at 0


@dataclass(frozen=True)
class SirenConfig(GPTConfig):
    hidden: int = param(256, "width of the SIREN's sine layers", low=1, high=4096)
    depth: int = param(3, "sine layers in the SIREN (the first, then depth-1 hidden ones), before a linear "
                          "read-out", low=1, high=16)
    omega0: float = param(30.0, "ω₀: frequency multiplier of the first sine layer", low=1e-3, high=1e4)
    siren_lr: float = param(1e-3, "Adam learning rate of the SIREN's first layer, biases and read-out",
                            low=0.0, high=10.0)

    def check(self) -> None:
        super().check()
        if self.mlp_activation in GLU_ACTIVATIONS:
            raise UserError(f"--mlp-activation {self.mlp_activation} needs a gate matrix the SIREN does not "
                            f"evaluate (it makes q, k, v, o, fc, proj); use relu2, gelu or leaky_relu2")


class SirenWeights(GeneratedWeights):
    """{kind: (num_layers, out, in)} evaluated from the SIREN, one (layer, kind) matrix per checkpointed chunk."""

    def __init__(self, c: SirenConfig):
        super().__init__()
        self.omega0, self.shapes, self.num_layers = c.omega0, block_matrix_shapes(c), c.num_layers
        # Inputs: row, column, layer, then the one-hot type, whose columns act as a learned phase per type. The
        # paper's first-layer init U(±1/fan_in) counts the three coordinates: the one-hot would dilute it.
        self.first = nn.Linear(3 + len(KINDS), c.hidden)
        nn.init.uniform_(self.first.weight, -1 / 3, 1 / 3)
        nn.init.uniform_(self.first.bias, -3 ** -0.5, 3 ** -0.5)
        # Hidden layers hold ω₀·W of the paper's init, U(±√(6/hidden)), so sin(Wx + b) needs no multiplier and
        # Muon's update is the same fraction of these weights as of the baseline's.
        bound = (6 / c.hidden) ** 0.5
        self.hidden = nn.ModuleList(nn.Linear(c.hidden, c.hidden) for _ in range(c.depth - 1))
        for layer in self.hidden:
            nn.init.uniform_(layer.weight, -bound, bound)
            nn.init.uniform_(layer.bias, -c.hidden ** -0.5, c.hidden ** -0.5)
        self.readout = nn.Linear(c.hidden, 1)
        nn.init.uniform_(self.readout.weight, -bound, bound)
        nn.init.zeros_(self.readout.bias)
        # Weight = gain · unit-RMS matrix / √(3·fan_in): gain 1 is nn.Linear's init RMS, 0 the zero-init kinds.
        gain = torch.ones(len(KINDS), c.num_layers)
        gain[[KINDS.index(k) for k in ZERO_INIT]] = 0.0
        self.gain = nn.Parameter(gain)
        self.register_buffer("layer_pos", torch.linspace(-1, 1, c.num_layers), persistent=False)
        for kind, (out, fan_in) in self.shapes.items():
            self.register_buffer("rows_" + kind, torch.linspace(-1, 1, out), persistent=False)
            self.register_buffer("cols_" + kind, torch.linspace(-1, 1, fan_in), persistent=False)

    def matrix(self, t: int, layer: int) -> Tensor:
        """The unit-RMS (out, in) matrix of type KINDS[t] in `layer`. The first layer is separable in the
        coordinates, so it is an outer sum of a row term and a column term, computed in fp32 for exact phases."""
        kind, w, b = KINDS[t], self.omega0 * self.first.weight, self.omega0 * self.first.bias
        rows, cols = getattr(self, "rows_" + kind), getattr(self, "cols_" + kind)
        shared = w[:, 2] * self.layer_pos[layer] + w[:, 3 + t] + b
        h = torch.sin((rows[:, None] * w[:, 0])[:, None] + (cols[:, None] * w[:, 1] + shared)[None])  # out×in×hidden
        for sine in self.hidden:
            h = torch.sin(sine(h))
        m = self.readout(h).squeeze(-1).float()
        return m * torch.rsqrt(m.square().mean() + 1e-12)

    def generate(self) -> dict[str, Tensor]:
        device, out = self.layer_pos.device, {}
        # The same precision in training (outside autocast) and in evaluation (inside): bf16 matmuls on CUDA.
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            for t, (kind, (_, fan_in)) in enumerate(self.shapes.items()):
                # Keep only each matrix for the backward pass, not its hidden × (out·in) activations.
                mats = [checkpoint(self.matrix, t, layer, use_reentrant=False, preserve_rng_state=False)
                        if torch.is_grad_enabled() else self.matrix(t, layer) for layer in range(self.num_layers)]
                out[kind] = torch.stack(mats) * (self.gain[t] / (3 * fan_in) ** 0.5)[:, None, None]
        return out


class SirenGPT(GPT):
    def __init__(self, c: SirenConfig):
        siren = SirenWeights(c)
        super().__init__(c, generated_blocks(c, siren.weights))
        self.siren = siren

    def param_groups(self, c: SirenConfig) -> list[ParamGroup]:
        """Muon for the hidden sine layers' matrices; Adam at siren_lr for the first layer (ω₀ multiplies its
        step, so it needs a small one), the biases and the read-out; Adam at scalar_lr for the gains and the
        control tensors; the tied embedding as in the baseline."""
        hidden = [layer.weight for layer in self.siren.hidden]
        rest_of_siren = [p for p in self.siren.parameters() if all(p is not q for q in hidden) and p is not
                         self.siren.gain]
        taken = {id(p) for p in hidden + rest_of_siren} | {id(self.tok_emb.weight)}
        rest = [p for p in self.parameters() if id(p) not in taken]
        return [ParamGroup("embed", [self.tok_emb.weight], "adam", c.tied_embed_lr),
                ParamGroup("sine_layers", hidden, "muon", c.matrix_lr),
                ParamGroup("siren", rest_of_siren, "adam", c.siren_lr),
                ParamGroup("scalar", rest, "adam", c.scalar_lr)]


register("siren", config=SirenConfig, build=SirenGPT, presets={"h256": {"hidden": 256}}, doc=__doc__)
