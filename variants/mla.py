"""mla — multi-head latent attention (DeepSeek-V2): every head's key and value up-projected from a small latent.

DeepSeek-V2 (arXiv 2405.04434), per layer: c_KV = W_DKV·x (width d_c = kv_latent_dim), and each of the num_heads
heads gets its own k_i = W_UK^(i)·c_KV and v_i = W_UV^(i)·c_KV; queries come from a second latent c_Q = W_DQ·x
(d_c' = q_latent_dim) as q = W_UQ·c_Q (q_latent_dim 0: q = W_Q·x, the baseline's); c_KV and c_Q are RMS-normed
(`latent_norm`). Decoupled RoPE (`rope_dim` = d_R > 0): q^R = RoPE(W_QR·c_Q) per head (from x without c_Q) and
one k^R = RoPE(W_KR·x) shared by all heads, scores [q^C; q^R]·[k^C; k^R] under one softmax, so q^C and k^C carry
no position and only c_KV and k^R need caching; with rope_dim 0, RoPE goes on q^C and k^C as in the baseline.

Kept from the baseline: the per-head q/k RMSNorm (on the content and RoPE parts apart, so both start at equal
weight) and the learned per-head q gain. They bound the attention logits as the challenge's learning rates
expect; a key norm is one scalar per head and token, so cached beside c_KV it still lets W_UK fold into the
query side at inference. The output projection is the baseline's, zero-initialised.

Defaults: d_R 32 (head dim / 2, as in the paper), d_c' 160 (≈0.3·width, the paper's 1536/5120), d_c 160. Both
latents are wider than 128 so that each latent matrix holds over 65,536 numbers: the export keeps smaller
tensors in fp16, 2 bytes a number instead of int8's 1. Stored at 9 layers × 512: 729,088 attention numbers a
layer (baseline 786,432), 16,543,816 in all. With rope_dim > 0 the q/k head dim (64 + d_R) differs from v's
(64), so flash attention cannot take the call on a GPU; the harness records the fallback kernel.

`mode gqa_latent` up-projects the latent to the baseline's num_kv_heads GQA groups instead: the study's "MLA"
(presets gqa_latent128 and gqa_latent64, RoPE on K, no latent norm; 15,880,264 and 15,290,440 stored).
Expected: near-baseline val_bpb with fewer stored numbers, and a KV cache of d_c + d_R numbers per token and
layer instead of the baseline's 512.
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
    mode: str = param("deepseek_v2", "deepseek_v2: a key and value per query head from the latent "
                      "(DeepSeek-V2; num_kv_heads unused); gqa_latent: the latent up-projected to num_kv_heads "
                      "GQA groups",
                      choices=("deepseek_v2", "gqa_latent"))
    kv_latent_dim: int = param(160, "width d_c of the per-token latent c_KV that K and V are up-projected from",
                               low=1, high=16384)
    q_latent_dim: int = param(160, "width d_c' of the query latent c_Q (0: queries straight from x, as the "
                              "baseline)", low=0, high=16384)
    rope_dim: int = param(32, "decoupled RoPE width per head (0: RoPE on the up-projected q and k, as the "
                          "baseline)", low=0, high=1024)
    latent_norm: bool = param(True, "RMSNorm the latents c_KV and c_Q before their up-projections (DeepSeek-V2)")

    def check(self) -> None:
        super().check()
        if self.rope_dim % 2:
            raise UserError(f"--rope-dim {self.rope_dim} must be even (RoPE rotates pairs)")


class LatentAttention(CausalSelfAttention):
    def __init__(self, c: MLAConfig):
        super().__init__(c)
        del self.c_k, self.c_v  # replaced by the latent path
        if c.mode == "deepseek_v2":
            self.num_kv_heads = c.num_heads
        kv_dim = self.num_kv_heads * self.head_dim
        self.latent_norm, self.q_latent, self.rope_dim = c.latent_norm, c.q_latent_dim > 0, c.rope_dim
        self.c_dkv = CastedLinear(c.model_dim, c.kv_latent_dim)
        self.c_uk = CastedLinear(c.kv_latent_dim, kv_dim)
        self.c_uv = CastedLinear(c.kv_latent_dim, kv_dim)
        if self.q_latent:  # c_q becomes W_UQ, reading c_Q instead of x
            self.c_dq = CastedLinear(c.model_dim, c.q_latent_dim)
            self.c_q = CastedLinear(c.q_latent_dim, c.model_dim)
        if c.rope_dim:
            self.c_qr = CastedLinear(c.q_latent_dim or c.model_dim, c.num_heads * c.rope_dim)
            self.c_kr = CastedLinear(c.model_dim, c.rope_dim)
            self.rotary = Rotary(c.rope_dim, c.rope_base)

    def forward(self, x: Tensor) -> Tensor:
        bsz, seqlen, _ = x.shape
        c_kv = self.c_dkv(x)
        c_q = self.c_dq(x) if self.q_latent else x
        if self.latent_norm:
            c_kv = rms_norm(c_kv)
            c_q = rms_norm(c_q) if self.q_latent else c_q
        q = self.c_q(c_q).reshape(bsz, seqlen, self.num_heads, self.head_dim)
        k = self.c_uk(c_kv).reshape(bsz, seqlen, self.num_kv_heads, self.head_dim)
        v = self.c_uv(c_kv).reshape(bsz, seqlen, self.num_kv_heads, self.head_dim)
        if not self.rope_dim:
            return self.proj(self.attend(q, k, v))
        q_r = self.c_qr(c_q).reshape(bsz, seqlen, self.num_heads, self.rope_dim)
        k_r = self.c_kr(x).reshape(bsz, seqlen, 1, self.rope_dim)
        return self.proj(self.attend_decoupled(q, k, v, q_r, k_r))

    def attend_decoupled(self, q: Tensor, k: Tensor, v: Tensor, q_r: Tensor, k_r: Tensor) -> Tensor:
        """Scores = q^C·k^C (no position) + q^R·k^R (RoPE; k^R shared by all heads), one softmax over both."""
        bsz, seqlen = q.shape[:2]
        q, k, v, q_r, k_r = (t.transpose(1, 2) for t in (q, k, v, q_r, k_r))
        cos, sin = self.rotary(seqlen, q.device, q_r.dtype)
        q_r, k_r = apply_rotary(rms_norm(q_r), cos, sin), apply_rotary(rms_norm(k_r), cos, sin)
        q = torch.cat((rms_norm(q), q_r), dim=-1) * self.q_gain.to(q.dtype)[None, :, None, None]
        k = torch.cat((rms_norm(k), k_r.expand(-1, self.num_kv_heads, -1, -1)), dim=-1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.num_kv_heads != self.num_heads)
        return y.transpose(1, 2).reshape(bsz, seqlen, -1)


def build(c: MLAConfig) -> GPT:
    return GPT(c, blocks=[Block(c, attn=LatentAttention(c)) for _ in range(c.num_layers)])


# The study's configurations are the GQA form; they restate every field whose default differs.
GQA_LATENT = {"mode": "gqa_latent", "q_latent_dim": 0, "rope_dim": 0, "latent_norm": False}

register("mla", config=MLAConfig, build=build, doc=__doc__, presets={
    "gqa_latent128": {**GQA_LATENT, "kv_latent_dim": 128},
    "gqa_latent64": {**GQA_LATENT, "kv_latent_dim": 64},
    "kv64": {"kv_latent_dim": 64},  # gqa_latent64's latent width in DeepSeek-V2's form
    "plain_rope": {"rope_dim": 0},  # RoPE on q^C, k^C: equal q/k/v head dims, so flash attention can run it
}, space={"mode": Choice("deepseek_v2", "gqa_latent"), "kv_latent_dim": Int(32, 256, log=True),
          "q_latent_dim": Choice(0, 96, 160, 256), "rope_dim": Choice(0, 16, 32), "latent_norm": Choice(False, True)})
