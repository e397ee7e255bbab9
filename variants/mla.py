"""mla — multi-head latent attention: keys and values up-projected from one small per-token latent.

Per layer c = W_dkv·x (dim → latent), K = W_uk·c and V = W_uv·c (latent → kv_dim); Q and the output projection
stay full rank, and q/k RMSNorm, RoPE on the up-projected K and the q gain are the baseline's (DeepSeek-V2,
2024). With latent 128 the K/V path stores 128·(512 + 2·256) numbers per layer instead of 2·256·512, and at
inference only c would need caching. Options: RMSNorm on c; a decoupled RoPE key (`rope_dim` > 0) as in
DeepSeek-V2, where RoPE goes only on an extra query part per head and one key part shared by all heads (from
x), and the up-projected K carries no position. Expected: near-baseline val_bpb with fewer attention bytes.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from harness.config import param
from harness.errors import UserError
from harness.model import GPT, Block, CastedLinear, CausalSelfAttention, GPTConfig, Rotary, apply_rotary, rms_norm
from harness.registry import register
from harness.tune.space import Choice, Int


@dataclass(frozen=True)
class MLAConfig(GPTConfig):
    kv_latent_dim: int = param(128, "width of the per-token latent c that K and V are up-projected from",
                               low=1, high=16384)
    latent_norm: bool = param(False, "RMSNorm the latent c before the up-projections")
    rope_dim: int = param(0, "decoupled RoPE width per head (DeepSeek-V2); 0: RoPE on the up-projected K",
                          low=0, high=1024)

    def check(self) -> None:
        super().check()
        if self.rope_dim % 2:
            raise UserError(f"--rope-dim {self.rope_dim} must be even (RoPE rotates pairs)")


class LatentAttention(CausalSelfAttention):
    def __init__(self, c: MLAConfig):
        super().__init__(c)
        del self.c_k, self.c_v  # replaced by the latent path
        kv_dim = c.num_kv_heads * self.head_dim
        self.latent_norm, self.rope_dim = c.latent_norm, c.rope_dim
        self.c_dkv = CastedLinear(c.model_dim, c.kv_latent_dim)
        self.c_uk = CastedLinear(c.kv_latent_dim, kv_dim)
        self.c_uv = CastedLinear(c.kv_latent_dim, kv_dim)
        if c.rope_dim:
            self.c_qr = CastedLinear(c.model_dim, c.num_heads * c.rope_dim)
            self.c_kr = CastedLinear(c.model_dim, c.rope_dim)
            self.rotary = Rotary(c.rope_dim, c.rope_base)

    def forward(self, x: Tensor) -> Tensor:
        bsz, seqlen, _ = x.shape
        latent = self.c_dkv(x)
        if self.latent_norm:
            latent = rms_norm(latent)
        q = self.c_q(x).reshape(bsz, seqlen, self.num_heads, self.head_dim)
        k = self.c_uk(latent).reshape(bsz, seqlen, self.num_kv_heads, self.head_dim)
        v = self.c_uv(latent).reshape(bsz, seqlen, self.num_kv_heads, self.head_dim)
        if not self.rope_dim:
            return self.proj(self.attend(q, k, v))
        return self.proj(self.attend_decoupled(x, q, k, v))

    def attend_decoupled(self, x: Tensor, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Scores = q_c·k_c (no position) + q_r·k_r (RoPE; k_r shared by all heads), one softmax over both."""
        bsz, seqlen = x.shape[:2]
        q_r = self.c_qr(x).reshape(bsz, seqlen, self.num_heads, self.rope_dim).transpose(1, 2)
        k_r = self.c_kr(x).reshape(bsz, seqlen, 1, self.rope_dim).transpose(1, 2)
        cos, sin = self.rotary(seqlen, x.device, q_r.dtype)
        q_r, k_r = apply_rotary(rms_norm(q_r), cos, sin), apply_rotary(rms_norm(k_r), cos, sin)
        q, k, v = (rms_norm(q.transpose(1, 2)), rms_norm(k.transpose(1, 2)), v.transpose(1, 2))
        q = torch.cat((q, q_r), dim=-1) * self.q_gain.to(q.dtype)[None, :, None, None]
        k = torch.cat((k, k_r.expand(-1, self.num_kv_heads, -1, -1)), dim=-1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.num_kv_heads != self.num_heads)
        return y.transpose(1, 2).reshape(bsz, seqlen, -1)


def build(c: MLAConfig) -> GPT:
    return GPT(c, blocks=[Block(c, attn=LatentAttention(c)) for _ in range(c.num_layers)])


register("mla", config=MLAConfig, build=build, doc=__doc__, presets={
    "latent128": {"kv_latent_dim": 128},
    "latent64": {"kv_latent_dim": 64},
}, space={"kv_latent_dim": Int(32, 256, log=True), "latent_norm": Choice(False, True), "rope_dim": Choice(0, 16, 32)})
