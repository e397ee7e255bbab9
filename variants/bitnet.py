"""bitnet — BitNet b1.58: every block matrix ternary {−1, 0, +1}·γ, 8-bit activations, stored at 1.6 bits a weight.

BitNet b1.58 (Ma et al. 2024, arXiv 2402.17764) on the baseline: the six block matrices (q, k, v, o, fc, proj;
gate too with a GLU activation) are BitLinear layers (harness/ternary.py): the forward pass uses
clamp(round(W/γ), −1, 1)·γ with one absmean scale γ = mean|W| per matrix, as in the paper (not per row or per
group), and each input is fake-quantised to 8-bit codes with an absmax scale per token (causal: one token's
scale never sees another). Both roundings train through a straight-through estimator on latent fp32 weights,
with the baseline's optimizers (Muon on the latent matrices). Kept as in the baseline: the tied embedding and
head (the paper keeps them in high precision too), the norms (the pre-branch RMSNorm replaces the paper's
SubLN inside BitLinear), the residual mixes, U-Net skips and soft cap; all model options apply.

Stored: the latent weights never; each block matrix goes through the artifact's "ternary" codec (the
export_tensors hook): five trits a byte plus one fp32 scale, and the restored model computes what the trained one
did. At 9 × 512: 17,059,912 numbers (15.3M of them trits), 1,998,535 model bytes at init (the zero-initialised
o and proj matrices are all zeros then), 3.63 MB with every weight random and nonzero (baseline: ~15.9 MB
trained); the same weights through int8+zlib take 4.14 MB (bench/packed_vs_int8.py). Per token the FLOPs equal
the baseline's plus the element-wise quantisers; on a GPU the ternary matmuls are ordinary bf16 matmuls here (no
ternary kernel), so it runs a little slower, and its metric zero_trit_fraction is the share a sparse ternary
kernel would skip.
Presets spend the saved bytes: d1024 (width 1024: 67.1M numbers, 66.1M trits, 13.8 MB random, ~4× the FLOPs) and
w_only (ternary weights, activations unquantised).
Expected: worse than the baseline at equal shape (the paper's parity needs ~3B parameters); the question is
whether a wider ternary model beats it at equal bytes.
"""

from harness.model import Block
from harness.registry import register
from harness.ternary import TernaryConfig, TernaryGPT, bit_linears


def build(c: TernaryConfig) -> TernaryGPT:
    return TernaryGPT(c, blocks=[Block(c, linear=bit_linears(c)) for _ in range(c.num_layers)])


register("bitnet", config=TernaryConfig, build=build, doc=__doc__, presets={
    "d1024": {"model_dim": 1024},  # 4× the block numbers in about the baseline's bytes; ~4× its FLOPs
    "w_only": {"activation_bits": 0},  # what the 8-bit activations cost, apart from the ternary weights
})
