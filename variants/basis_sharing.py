"""basis_sharing — each weight type shares one basis U across layers; a layer stores only coefficients: W = U·C.

Basis Sharing (Wang et al. 2024, "Basis Sharing: Cross-Layer Parameter Sharing for Large Language Model
Compression") found that the same-type matrices of different layers span nearly the same column space, so
one basis U_t (out × r) per type t ∈ {q, k, v, o, fc, proj} and per-layer coefficients C_{t,l} (r × in) keep
most of the model at a fraction of the weights. The paper compresses a trained model by SVD; here the factors
are trained from scratch, and W is never formed: y = (x·Cᵀ)·Uᵀ. `group_size` g > 0 shares a basis only within
runs of g consecutive layers (0: one basis per type for the whole depth). A rank above min(out, in) of a
matrix is clamped to it (the product cannot have a higher rank), so r128 runs at width 128 with k/v at 64.
Stored: the bases and coefficients — at 9×512 and r = 128 about 5.0M numbers against the baseline's 17.1M,
room to spend on depth or width under the cap; expect a small loss per parameter, a large saving in bytes.
(At smoke size, width 128, r = 128 is full rank: it trained like the baseline, val_bpb 2.828 vs 2.822.)
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.config import param
from harness.model import GPT, Block, GPTConfig
from harness.optim import ParamGroup, default_param_groups
from harness.registry import register


@dataclass(frozen=True)
class BasisSharingConfig(GPTConfig):
    rank: int = param(128, "rank r of each shared basis, clamped per matrix to min(out, in)", low=1, high=16384)
    group_size: int = param(0, "consecutive layers that share a basis (0 or >= --num-layers: all layers)",
                            low=0, high=256)
    basis_lr: float = param(0.005, "Muon learning rate of the shared bases (coefficients use --matrix-lr)",
                            low=0.0, high=10.0)


class BasisBank(nn.Module):
    """The shared bases, one per (type, layer group), created by the first layer that asks for it.

    A basis starts with orthonormal columns, so W = U·C has exactly C's singular values at init.
    """

    def __init__(self):
        super().__init__()
        self.bases = nn.ParameterDict()

    def basis(self, key: str, out_features: int, rank: int) -> nn.Parameter:
        if key not in self.bases:
            self.bases[key] = nn.Parameter(nn.init.orthogonal_(torch.empty(out_features, rank)))
        return self.bases[key]


class BasisLinear(nn.Module):
    """y = (x·Cᵀ)·Uᵀ with this layer's coefficients C and its group's shared basis U (held by the bank)."""

    def __init__(self, bank: BasisBank, key: str, in_features: int, out_features: int, rank: int,
                 zero_init: bool):
        super().__init__()
        bank.basis(key, out_features, rank)
        self.bank = (bank,)  # a plain reference, not a submodule: the basis is stored once, in the model's bank
        self.key = key
        self.coef = nn.Parameter(torch.zeros(rank, in_features))
        if not zero_init:
            # ‖U·C‖_F = ‖C‖_F; match nn.Linear's default init (std 1/√(3·in)) of the full out × in matrix.
            nn.init.normal_(self.coef, std=(out_features / (3 * rank * in_features)) ** 0.5)
        # Zero-init kinds (o, proj) start with C = 0 and a random U: zero output, yet C gets U's gradient at once.

    def forward(self, x: Tensor) -> Tensor:
        basis = self.bank[0].bases[self.key]
        return F.linear(F.linear(x, self.coef.to(x.dtype)), basis.to(x.dtype))


class BasisSharingGPT(GPT):
    def __init__(self, c: BasisSharingConfig):
        bank = BasisBank()

        def factory(layer: int):
            group = layer // c.group_size if c.group_size else 0

            def linear(kind: str, in_features: int, out_features: int, zero_init: bool) -> nn.Module:
                rank = min(c.rank, in_features, out_features)
                return BasisLinear(bank, f"{kind}{group}", in_features, out_features, rank, zero_init)
            return linear

        super().__init__(c, blocks=[Block(c, linear=factory(layer)) for layer in range(c.num_layers)])
        self.bank = bank

    def param_groups(self, c: BasisSharingConfig) -> list[ParamGroup]:
        """The default split, with the bases moved to their own Muon group at --basis-lr.

        Muon's step has a fixed spectral size whatever the gradient, so summing every layer's gradient into U
        does not enlarge it, but its tall-matrix correction scales a basis step by √(out/r) (1.4–2.8 at
        r = 128), and one basis step moves every layer of its group at once. Equal relative change of U and
        C per step would be ≈ 0.01 at 9×512; half of that allows for the shared effect. At smoke size (80
        steps) lower was better throughout: val_bpb 2.890 at 0.04, 2.835 at 0.01, 2.828 at 0.005, 2.809 at 0.
        """
        return default_param_groups(self, c, ParamGroup("basis", list(self.bank.parameters()), "muon", c.basis_lr))


register("basis_sharing", config=BasisSharingConfig, build=BasisSharingGPT, doc=__doc__,
         presets={"r128": {"rank": 128}, "r64": {"rank": 64}})
