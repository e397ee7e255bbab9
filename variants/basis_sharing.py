"""basis_sharing — groups of consecutive layers share one input-side basis per weight type: W_l = C_l·B.

Basis Sharing (Wang et al. 2024, "Basis Sharing: Cross-Layer Parameter Sharing for Large Language Model
Compression", arXiv 2410.03765) writes the same-type matrices of a group of consecutive layers over one
shared basis. In nn.Linear's orientation (out × in): W_l = C_l·B, B (k × in) shared by the group, C_l (out × k)
private to layer l, so y = C_l·(B·x). As in the paper the query, key, value and MLP input (fc) projections
share bases, the attention output (o) and MLP output (proj) projections stay private, full rank and
zero-initialised as the baseline's, and a group is 2 layers (`group_size`; 0 or ≥ num_layers: one group).
The paper compresses a trained model by SVD; here B and C are trained from scratch and W is never formed.
A rank above min(out, in) of a matrix is clamped to it (the product cannot have a higher rank).
`basis_side output` shares an output-side basis instead, W_l = U·C_l with U (out × k): the parameter-golf
study's "cross-layer SVD basis for each weight type", kept as the presets output_basis_r128 and
output_basis_r64 (all six types, one group for all layers, basis lr 0.005: the family's former default).
Stored at 9×512 against the baseline's 17.06M: 11.29M at the default k = 128 (private o and proj 7.08M,
coefficients 2.36M, 5 groups of bases 1.31M) and 9.46M at input_basis_r64; output_basis_r128 5.07M and
output_basis_r64 2.81M. Expect the paper's form near the baseline at two thirds (k = 128) or 55% (k = 64)
of its numbers, and the output-side presets further behind at 30% and 16% of them.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.config import param
from harness.errors import UserError
from harness.model import GPT, Block, GPTConfig, casted_linear
from harness.optim import ParamGroup, default_param_groups
from harness.registry import register
from harness.tune.space import Choice, Float, Int

KINDS = ("q", "k", "v", "o", "fc", "proj")


@dataclass(frozen=True)
class BasisSharingConfig(GPTConfig):
    rank: int = param(128, "rank k of each shared basis, clamped per matrix to min(out, in)", low=1, high=16384)
    group_size: int = param(2, "consecutive layers that share a basis (0 or >= --num-layers: all layers)",
                            low=0, high=256)
    basis_side: str = param("input", "input: W = C·B, basis B (k × in) shared (the paper); output: W = U·C, "
                            "basis U (out × k) shared", choices=("input", "output"))
    shared_kinds: tuple[str, ...] = param(("q", "k", "v", "fc"), "block matrices built on shared bases, of "
                                          "q,k,v,o,fc,proj; the others stay private and full rank")
    basis_lr: float = param(0.02, "Muon learning rate of the shared bases (coefficients use --matrix-lr)",
                            low=0.0, high=10.0)

    def check(self) -> None:
        super().check()
        unknown = [kind for kind in self.shared_kinds if kind not in KINDS]
        if unknown:
            raise UserError(f"--shared-kinds {unknown[0]!r} is not a block matrix; choose from {','.join(KINDS)}")
        if not self.shared_kinds or len(set(self.shared_kinds)) != len(self.shared_kinds):
            raise UserError(f"--shared-kinds {','.join(self.shared_kinds) or '(empty)'} must name each shared "
                            f"matrix once, at least one (sharing none is the baseline)")


class BasisBank(nn.Module):
    """The shared bases, one per (type, layer group), created by the first layer that asks for it.

    A basis starts orthonormal (B's rows, U's columns), so W = C·B or U·C has exactly C's singular values at init.
    """

    def __init__(self):
        super().__init__()
        self.bases = nn.ParameterDict()

    def basis(self, key: str, shape: tuple[int, int]) -> nn.Parameter:
        if key not in self.bases:
            self.bases[key] = nn.Parameter(nn.init.orthogonal_(torch.empty(shape)))
        return self.bases[key]


class BasisLinear(nn.Module):
    """y = (x·Aᵀ)·Zᵀ with A (k × in), Z (out × k): input side A is the group's basis B and Z this layer's C;
    output side A is this layer's C and Z the group's basis U (the bank holds the basis)."""

    def __init__(self, bank: BasisBank, key: str, in_features: int, out_features: int, rank: int,
                 input_side: bool, zero_init: bool):
        super().__init__()
        first, second = (rank, in_features), (out_features, rank)
        bank.basis(key, first if input_side else second)
        self.bank = (bank,)  # a plain reference, not a submodule: the basis is stored once, in the model's bank
        self.key, self.input_side = key, input_side
        self.coef = nn.Parameter(torch.zeros(second if input_side else first))
        if not zero_init:
            # ‖W‖_F = ‖C‖_F; match nn.Linear's default init (std 1/√(3·in)) of the full out × in matrix.
            nn.init.normal_(self.coef, std=(out_features / (3 * self.coef.numel())) ** 0.5)
        # Zero-init kinds shared on the output side (o, proj) start with C = 0: zero output, yet C learns at once.

    def forward(self, x: Tensor) -> Tensor:
        basis, coef = self.bank[0].bases[self.key].to(x.dtype), self.coef.to(x.dtype)
        first, second = (basis, coef) if self.input_side else (coef, basis)
        return F.linear(F.linear(x, first), second)


class BasisSharingGPT(GPT):
    def __init__(self, c: BasisSharingConfig):
        bank = BasisBank()

        def factory(layer: int):
            group = layer // c.group_size if c.group_size else 0

            def linear(kind: str, in_features: int, out_features: int, zero_init: bool) -> nn.Module:
                if kind not in c.shared_kinds:
                    return casted_linear(kind, in_features, out_features, zero_init)
                rank = min(c.rank, in_features, out_features)
                return BasisLinear(bank, f"{kind}{group}", in_features, out_features, rank,
                                   c.basis_side == "input", zero_init)
            return linear

        super().__init__(c, blocks=[Block(c, linear=factory(layer)) for layer in range(c.num_layers)])
        self.bank = bank

    def param_groups(self, c: BasisSharingConfig) -> list[ParamGroup]:
        """The default split, with the bases moved to their own Muon group at --basis-lr.

        Muon's step has a fixed spectral size whatever the gradient (summing a group's gradients into a basis
        does not enlarge it), times √(rows/cols) for a tall matrix. An orthonormal basis has spectral norm 1.
        Input side, k = 128 at 9×512: B (k × in) is wide, so its relative step is the lr itself; C (out × k) is
        tall, and at --matrix-lr 0.04 moves ≈ 0.045 of its norm for every shared type. Equal relative change is
        then ≈ 0.04, and half of it, 0.02, allows for one basis step moving both layers of its group. Output
        side, U (out × k) is the tall one (×1.4–2.8 at k = 128) and C moves ≈ 0.023: equal change at ≈ 0.01,
        halved to 0.005 as U moves all nine layers at once (the output_basis presets).
        At smoke size k = 128 is full rank (B square), so it was measured at k = 32 (120 steps, seed 0): val_bpb
        2.566 at 0 (a frozen random basis), 2.565 at 0.005, 2.562 at 0.02, 2.559 at 0.04: flat within noise there.
        """
        return default_param_groups(self, c, ParamGroup("basis", list(self.bank.parameters()), "muon", c.basis_lr))


OUTPUT_SIDE_ALL_TYPES = {"basis_side": "output", "shared_kinds": KINDS, "group_size": 0, "basis_lr": 0.005}

register("basis_sharing", config=BasisSharingConfig, build=BasisSharingGPT, doc=__doc__, presets={
    "input_basis_r128": {"rank": 128},
    "input_basis_r64": {"rank": 64},
    "output_basis_r128": {**OUTPUT_SIDE_ALL_TYPES, "rank": 128},  # the study's runs (sweeps/thirty-experiments)
    "output_basis_r64": {**OUTPUT_SIDE_ALL_TYPES, "rank": 64},
}, space={"rank": Int(32, 256, log=True), "group_size": Choice(1, 2, 3, 0),
          "basis_lr": Float(0.002, 0.08, log=True)})
