"""mps — a matrix-product-state LM (state h₀·A[x₀]···A[x_t], parallel prefix-product scan), or tensor-train linears.

mode "mps": each token x owns a bond × bond matrix A[x] (started near the identity), and the state after token
t is the row vector h₀·A[x₀]·A[x₁]···A[x_t]: a uniform matrix-product state over the sequence (Miller et al.
2021, "Tensor Networks for Probabilistic Sequence Modeling"), i.e. a linear recurrence whose transition
matrix the token chooses. Logits = softcap(W_out·rms_norm(h_t)). The prefix products come from a Hillis–Steele
scan, ⌈log₂T⌉ rounds of batched matmuls (inside chunks of 8 tokens, then across chunks); as the state is
RMS-normed before the read-out only its direction matters, so every partial product is divided by its
Frobenius norm. A[x] − I is what is stored, so int8 keeps its detail: 4.26M numbers at bond 64 (bond² per
token). Expect an n-gram-like model far behind attention: a probe of what a tensor network holds per byte.
mode "tt_linear": the baseline with every block matrix a TT-matrix (Novikov et al. 2015, "Tensorizing Neural
Networks"): out = m₁···m_d, in = n₁···n_d (near-equal factors, chosen automatically; d = `tt_cores`), cores
G_k (r_{k−1}·m_k × n_k·r_k, rank `tt_rank`); W is rebuilt from the cores at each call and applied densely,
so the step costs the baseline's. 4.38M numbers at rank 64 against the baseline's 17.1M: expect it behind
the baseline; the question is whether TT structure beats plain low rank (basis_sharing) at equal bytes.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.config import param
from harness.model import GPT, Block, CastedLinear, GPTConfig, rms_norm
from harness.optim import ParamGroup
from harness.registry import register
from harness.tune.space import Choice, Float, Int


@dataclass(frozen=True)
class MPSConfig(GPTConfig):
    mode: str = param("mps", "mps: matrix-product-state LM; tt_linear: baseline with tensor-train block linears",
                      choices=("mps", "tt_linear"))
    bond_dim: int = param(64, "MPS bond dimension: the state's width; each token stores bond² numbers (mps)",
                          low=1, high=1024)
    transfer_init_std: float = param(0.01, "init std of the entries of A[x] − I (mps)", low=0.0, high=1.0)
    transfer_lr: float = param(0.003, "Adam learning rate of A[x] − I (mps; tuned at bond 64)", low=0.0, high=10.0)
    tt_rank: int = param(64, "TT rank between the cores of each block linear, clamped to the most useful "
                         "(tt_linear)", low=1, high=4096)
    tt_cores: int = param(2, "cores per TT-matrix: the number of factors of in and out (tt_linear)", low=2, high=6)


SCAN_CHUNK = 8  # tokens per first-level scan: cost only, the result is the same for any chunk size


def prefix_products(prod: Tensor) -> Tensor:
    """Inclusive prefix products along dim 1 (earlier factors on the left) by Hillis–Steele: ⌈log₂n⌉ rounds of
    prod[t] ← prod[t − s]·prod[t], each partial product divided by its Frobenius norm (a positive factor the
    normalised read-out cannot see, so it is taken without gradient)."""
    shift = 1
    while shift < prod.size(1):
        prod = torch.cat((prod[:, :shift], prod[:, :-shift] @ prod[:, shift:]), dim=1)
        prod = prod / prod.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-30).detach()
        shift *= 2
    return prod


class MatrixProductState(nn.Module):
    def __init__(self, c: MPSConfig):
        super().__init__()
        self.config = c
        self.transfer = nn.Embedding(c.vocab_size, c.bond_dim ** 2)  # A[x] − I, flattened row-major
        nn.init.normal_(self.transfer.weight, std=c.transfer_init_std)
        self.h0 = nn.Parameter(torch.randn(c.bond_dim))
        self.head = CastedLinear(c.bond_dim, c.vocab_size)
        nn.init.normal_(self.head.weight, std=c.tied_embed_init_std)

    def param_groups(self, c: MPSConfig) -> list[ParamGroup]:
        """A[x] − I is a lookup table, so Adam, but far below the embedding's lr: an Adam step moves each of
        its bond² entries by about lr, so A[x] by up to lr·bond in norm, and every later state with it. On the
        smoke corpus (bond 64, 40 steps) lr 0.002–0.003 learned best; 0.01 was worse and 0.03 did not learn."""
        return [ParamGroup("transfer", [self.transfer.weight], "adam", c.transfer_lr),
                ParamGroup("head", [self.head.weight], "muon", c.matrix_lr),
                ParamGroup("h0", [self.h0], "adam", c.scalar_lr)]

    def states(self, input_ids: Tensor) -> Tensor:
        """(B, T) → (B, T, bond): h₀·A[x₀]···A[x_t] up to a positive factor, in fp32 (a product of T matrices).

        Two levels of the same scan: prefix products inside chunks of SCAN_CHUNK tokens (all T at once), then
        across the chunks' totals, whose prefixes carry h₀ into each chunk as a vector. Still ⌈log₂T⌉ rounds,
        but ~2.5× fewer matmuls than one scan over all T (3 full rounds at C = 8, then T/C-sized ones).
        """
        bsz, seqlen = input_ids.shape
        bond, pad = self.config.bond_dim, -seqlen % SCAN_CHUNK
        eye = torch.eye(bond, device=input_ids.device)
        a = self.transfer(input_ids).float().view(bsz, seqlen, bond, bond) + eye
        if pad:  # identities after the last token change nothing before them
            a = torch.cat((a, eye.expand(bsz, pad, bond, bond)), dim=1)
        within = prefix_products(a.view(-1, SCAN_CHUNK, bond, bond)).view(bsz, -1, SCAN_CHUNK, bond, bond)
        across = prefix_products(within[:, :-1, -1])  # chunk k's row: the product of chunks 0..k
        h0 = self.h0.float().expand(bsz, 1, bond)
        carry = torch.cat((h0, (h0.unsqueeze(1) @ across).squeeze(2)), dim=1)  # the state entering each chunk
        h = (carry.unsqueeze(2).unsqueeze(3) @ within).squeeze(3)  # (B, chunks, C, bond)
        return h.flatten(1, 2)[:, :seqlen]

    def forward(self, input_ids: Tensor) -> Tensor:
        with torch.autocast(input_ids.device.type, enabled=False):
            h = self.states(input_ids)
        logits = self.head(rms_norm(h))
        cap = self.config.logit_softcap
        return cap * torch.tanh(logits / cap)


def near_equal_factors(n: int, count: int) -> list[int]:
    """n as `count` integer factors, each the divisor nearest (in log) to the remaining part's equal share."""
    factors = []
    for left in range(count, 0, -1):
        share = n ** (1.0 / left)
        factors.append(min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: abs(math.log(d / share))))
        n //= factors[-1]
    return factors


class TTLinear(nn.Module):
    """A TT-matrix: W[(i₁..i_d), (j₁..j_d)] = G₁[i₁, j₁]···G_d[i_d, j_d], a product of r_{k−1} × r_k slices.

    W is rebuilt from its cores at each call (out·in·r multiply-adds) and applied as one dense matmul: with
    tens of thousands of tokens per micro-batch that is far cheaper than passing every token through the
    cores (4–8× the dense work at rank 64, through an intermediate 30–60× a token's width). Output factors
    descend and input factors ascend, which balances the cores' sizes.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, cores: int, zero_init: bool):
        super().__init__()
        self.m = sorted(near_equal_factors(out_features, cores), reverse=True)
        self.n = sorted(near_equal_factors(in_features, cores))
        sizes = [mk * nk for mk, nk in zip(self.m, self.n)]
        self.r = [1] + [min(rank, math.prod(sizes[:k]), math.prod(sizes[k:])) for k in range(1, cores)] + [1]
        # Each W entry sums Π r_k products of d core entries: this std gives nn.Linear's 1/√(3·in) per entry.
        std = (1.0 / (3 * in_features * math.prod(self.r))) ** (0.5 / cores)
        self.cores = nn.ParameterList(  # core k as the map it is: (n_k, r_k) → (r_{k−1}, m_k), for Muon
            nn.Parameter(torch.randn(self.r[k] * self.m[k], self.n[k] * self.r[k + 1]) * std) for k in range(cores))
        if zero_init:
            nn.init.zeros_(self.cores[0])  # zero output, while the other cores still pass it a gradient

    def weight(self) -> Tensor:
        w = self.cores[0].view(self.m[0], self.n[0], self.r[1])
        for k in range(1, len(self.cores)):
            core = self.cores[k].view(self.r[k], self.m[k], self.n[k], self.r[k + 1])
            w = torch.einsum("abr,rmns->ambns", w, core).reshape(w.size(0) * self.m[k], w.size(1) * self.n[k], -1)
        return w.squeeze(-1)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight().to(x.dtype))


def build(c: MPSConfig) -> nn.Module:
    if c.mode == "mps":
        return MatrixProductState(c)

    def tt_linear(kind: str, in_features: int, out_features: int, zero_init: bool) -> nn.Module:
        return TTLinear(in_features, out_features, c.tt_rank, c.tt_cores, zero_init)
    return GPT(c, blocks=[Block(c, linear=tt_linear) for _ in range(c.num_layers)])


register("mps", config=MPSConfig, build=build, doc=__doc__,
         presets={"bond64": {"mode": "mps", "bond_dim": 64}, "tt64": {"mode": "tt_linear", "tt_rank": 64}},
         space={"mode": Choice("mps", "tt_linear"),  # each mode's own knobs are searched only under that mode
                "bond_dim": Int(16, 128, log=True, when={"mode": ("mps",)}),
                "transfer_lr": Float(1e-3, 1e-2, log=True, when={"mode": ("mps",)}),
                "tt_rank": Int(16, 128, log=True, when={"mode": ("tt_linear",)}),
                "tt_cores": Choice(2, 3, when={"mode": ("tt_linear",)})})
