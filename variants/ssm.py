"""ssm — every block's attention replaced by a selective state-space mixer (Mamba), scanned in chunks with matmuls.

Mamba (Gu & Dao 2023, arXiv 2312.00752) in plain PyTorch (harness/ssm.py): one in_proj to z, x (width E =
expand·model_dim), B_t, C_t (state size N = 16) and a low-rank code for Δ; a causal depthwise conv (kernel 4) and
silu on (x, B, C); Δ_t = softplus(dt_proj(code) + b) > 0; h_t = exp(Δ_t·A)·h_{t−1} + Δ_t·x_t⊗B_t with A < 0 stored
as log(−A) (S4D-real rates), y_t = C_t·h_t + D⊙x_t, gated by silu(z), out_proj. As in Mamba-2 (arXiv
2405.21060), Δ and A are per head (P = 64 channels share them; Mamba-1 has them per channel and state, which
has no matmul form): that is what lets the scan run in chunks of --chunk-len tokens as one masked L × L
product from cumulative sums of Δ·A, with the chunk-end states carried across chunks by one n × n decay
matrix, no loop over positions. The blocks' MLPs, norms, residual mixes and the U-Net skips are the baseline's.

Stored at width 512: an expand-2 mixer holds 1.61M numbers to attention's 0.79M, so six layers (nine would end
over the cap once trained): 16,504,448 numbers (baseline 17,059,912), 5,048,632 bytes at init. Preset deep9:
nine layers of expand-0.875 mixers (448 channels, 7 heads, each mixer about attention's size), 16,497,790
numbers, 4,801,659 bytes. Forward FLOPs per token and layer at seq_len 1024 (FlopCounterMode, matmuls): the
expand-2 mixer 3.42M (projections 3.21M, scan 0.21M, linear in T) against attention's 3.67M (1.57M
projections, 2.10M scores and values over the full T × T; 1.05M of those with a causal kernel); the model 34.1M
to the baseline's 53.0M (×0.64; deep9 33.7M). Mamba's fused selective-scan CUDA kernel is not used: the
chunked form is matmul-heavy and compiles with fullgraph, but it runs as many small kernels, computes the masked
upper half of every L × L chunk matrix (a causal kernel would skip (L−1)/2L ≈ 49% of it, 0.07M FLOPs a token),
and keeps three H × L tensors a token and layer for the backward pass (fp32 decays, their bf16 copy, the
scores: ~8 KB at H = 16, L = 64, where flash attention keeps ~3 KB), so expect it slower per token than the
baseline on a GPU at this length despite the fewer FLOPs. Expected: behind attention at equal bytes on this
short-context task, most on copying and recall; the hybrid family restores those with two attention layers.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness import ssm
from harness.config import param
from harness.model import GPT, Block
from harness.registry import register
from harness.ssm import SSMConfig, SSMMixer


@dataclass(frozen=True)
class SSMModelConfig(SSMConfig):
    # Six blocks, not nine: each expand-2 mixer stores ~0.9M numbers more than attention, and nine would end over
    # the 16 MB cap once trained.
    num_layers: int = param(6, "blocks, each a state-space mixer and an MLP", low=1, high=256)


class SSMGPT(GPT):
    def __init__(self, c: SSMModelConfig):
        super().__init__(c, blocks=[Block(c, attn=SSMMixer(c)) for _ in range(c.num_layers)])

    param_groups = ssm.param_groups


register("ssm", config=SSMModelConfig, build=SSMGPT, doc=__doc__,
         presets={"deep9": {"expand": 0.875, "num_layers": 9}})
