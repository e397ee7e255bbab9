"""hypernetwork — learned layer embeddings drive a factorised generator of every block matrix as rank-r factors.

A hypernetwork (Ha, Dai & Le 2016, "HyperNetworks") in its static form: each layer l has a learned embedding
e_l, and for every weight type t (q, k, v, o, fc, proj) the generator emits W_{t,l} = U_{t,l} V_{t,l}ᵀ with
U_{t,l} = A_t · reshape(M_t e_l) and V_{t,l} = B_t · reshape(N_t e_l): A_t (out × h), B_t (in × h) are bases
shared by all layers, M_t and N_t map an embedding to an h × rank core. Blocks apply (x·V)·Uᵀ, never forming W.
Stored: the bases, the core maps, the embeddings, a per-type-per-layer gain, and the usual small tensors;
the factors are regenerated once per optimizer step. At full size (dim 512, 9 layers, rank 32, h 128) the
generator holds ~4.0M numbers (bases 0.85M, core maps 3.1M), against 16.5M in the baseline's block matrices:
expect a much smaller artifact and a worse val_bpb, the gap showing what rank-32 layers sharing bases cost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from harness.config import param
from harness.errors import UserError
from harness.hooks import GeneratedWeights
from harness.model import GLU_ACTIVATIONS, GPT, Block, GPTConfig
from harness.optim import ParamGroup
from harness.registry import register

KINDS = ("q", "k", "v", "o", "fc", "proj")
ZERO_INIT = ("o", "proj")  # the baseline zero-inits these; their gains start at 0 so blocks start as identity


@dataclass(frozen=True)
class HypernetworkConfig(GPTConfig):
    rank: int = param(32, "rank of every generated block matrix (W = U Vᵀ)", low=1, high=4096)
    layer_embed_dim: int = param(64, "size of each layer's learned embedding", low=1, high=4096)
    basis_dim: int = param(128, "width h of the shared per-type bases A_t (out × h) and B_t (in × h)",
                           low=1, high=8192)

    def check(self) -> None:
        super().check()
        if self.basis_dim < self.rank:
            raise UserError(f"--basis-dim {self.basis_dim} is below --rank {self.rank}: the factors could not "
                            f"reach that rank; raise --basis-dim or lower --rank")
        if self.mlp_activation in GLU_ACTIVATIONS:
            raise UserError(f"--mlp-activation {self.mlp_activation} needs a gate matrix the generator does not "
                            f"emit (it makes q, k, v, o, fc, proj); use relu2, gelu or leaky_relu2")


def kind_shapes(c: GPTConfig) -> dict[str, tuple[int, int]]:
    """(out, in) of each block matrix type, as Block builds them."""
    d, kv, hidden = c.model_dim, c.num_kv_heads * (c.model_dim // c.num_heads), c.mlp_mult * c.model_dim
    return {"q": (d, d), "k": (kv, d), "v": (kv, d), "o": (d, d), "fc": (hidden, d), "proj": (d, hidden)}


class FactorGenerator(GeneratedWeights):
    """Emits {"<kind>.u": (L, out, rank), "<kind>.v": (L, in, rank)} from the layer embeddings.

    Every matrix is initialised like a unit-scale linear map (entries ~ 1/√fan_in), so Muon's updates are a
    similar fraction of each; fixed multipliers then give W entries the baseline's std 1/√(3·in).
    """

    def __init__(self, c: HypernetworkConfig):
        super().__init__()
        self.rank, self.h = c.rank, c.basis_dim
        self.shapes = kind_shapes(c)
        self.layer_embed = nn.Parameter(torch.randn(c.num_layers, c.layer_embed_dim))
        gain = torch.ones(len(KINDS), c.num_layers)
        gain[[KINDS.index(k) for k in ZERO_INIT]] = 0.0
        self.gain = nn.Parameter(gain)

        def matrix(rows: int, cols: int) -> nn.Parameter:
            return nn.Parameter(torch.randn(rows, cols) / cols ** 0.5)

        core = c.basis_dim * c.rank
        self.u_basis = nn.ParameterDict({k: matrix(o, c.basis_dim) for k, (o, _) in self.shapes.items()})
        self.v_basis = nn.ParameterDict({k: matrix(i, c.basis_dim) for k, (_, i) in self.shapes.items()})
        self.u_core = nn.ParameterDict({k: matrix(core, c.layer_embed_dim) for k in KINDS})
        self.v_core = nn.ParameterDict({k: matrix(core, c.layer_embed_dim) for k in KINDS})

    def generate(self) -> dict[str, Tensor]:
        out = {}
        # fp32 always: training generates outside autocast, evaluation inside it, and both must agree.
        with torch.autocast(self.layer_embed.device.type, enabled=False):
            for t, kind in enumerate(KINDS):
                out.update(self.factors(t, kind))
        return out

    def factors(self, t: int, kind: str) -> dict[str, Tensor]:
        layers, fan_in = self.layer_embed.size(0), self.shapes[kind][1]
        core_u = (self.layer_embed @ self.u_core[kind].T).view(layers, self.h, self.rank)
        core_v = (self.layer_embed @ self.v_core[kind].T).view(layers, self.h, self.rank)
        gain = self.gain[t].view(layers, 1, 1) / (3 * self.rank) ** 0.5
        return {f"{kind}.u": gain * (self.u_basis[kind] @ core_u),        # (L, out, rank)
                f"{kind}.v": (self.v_basis[kind] @ core_v) / fan_in ** 0.5}  # (L, in, rank)


class FactoredLinear(nn.Module):
    """Layer `layer`'s `kind` matrix as (x·V)·Uᵀ with U, V read from the generator's weights() each call."""

    def __init__(self, weights: Callable[[], dict[str, Tensor]], kind: str, layer: int):
        super().__init__()
        self.weights, self.kind, self.layer = weights, kind, layer  # a bound method: not a submodule

    def forward(self, x: Tensor) -> Tensor:
        w = self.weights()
        u, v = w[f"{self.kind}.u"][self.layer], w[f"{self.kind}.v"][self.layer]
        return (x @ v.to(x.dtype)) @ u.to(x.dtype).T


class HypernetworkGPT(GPT):
    def __init__(self, c: HypernetworkConfig):
        generator = FactorGenerator(c)

        def factory(layer: int):
            return lambda kind, fan_in, fan_out, zero_init: FactoredLinear(generator.weights, kind, layer)

        super().__init__(c, [Block(c, linear=factory(layer)) for layer in range(c.num_layers)])
        self.generator = generator

    def param_groups(self, c: HypernetworkConfig) -> list[ParamGroup]:
        """Muon for the bases and core maps (large matrices, as the baseline's block matrices); Adam at the
        scalar lr for the layer embeddings (a 9-row lookup table whose rows move independently, like the token
        embedding), the gains and the control tensors; the tied embedding as in the baseline."""
        g = self.generator
        matrices = [*g.u_basis.values(), *g.v_basis.values(), *g.u_core.values(), *g.v_core.values()]
        taken = {id(p) for p in matrices} | {id(self.tok_emb.weight)}
        rest = [p for p in self.parameters() if id(p) not in taken]
        return [ParamGroup("embed", [self.tok_emb.weight], "adam", c.tied_embed_lr),
                ParamGroup("generator", matrices, "muon", c.matrix_lr),
                ParamGroup("scalar", rest, "adam", c.scalar_lr)]


register("hypernetwork", config=HypernetworkConfig, build=HypernetworkGPT,
         presets={"r32": {"rank": 32, "layer_embed_dim": 64, "basis_dim": 128}}, doc=__doc__)
