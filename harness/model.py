"""Shared model pieces and the challenge's baseline GPT, which every variant builds on.

The architecture follows parameter-golf's train_gpt.py: tied embeddings, RMS-normed inputs, GQA attention with
q/k RMSNorm, RoPE and a learned per-head q gain, relu² MLPs, learned residual mixes with the block-0 input,
U-Net skips and tanh-soft-capped logits. Variants import from here and change only what is new about them.
The model returns logits; the harness computes every loss and metric from them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.config import param
from harness.errors import UserError

# Small "control" tensors: kept in fp32 in the artifact and trained with Adam even when 2-D (resid_mix).
CONTROL_TENSOR_PATTERNS = ("attn_scale", "mlp_scale", "resid_mix", "q_gain", "skip_weight")


@dataclass(frozen=True)
class GPTConfig:
    """The challenge baseline's shape and optimizer settings; every variant's config extends this one."""
    vocab_size: int = param(1024, "vocabulary size; must equal the dataset tokenizer's", low=2, high=65536)
    num_layers: int = param(9, "transformer blocks", low=1, high=256)
    model_dim: int = param(512, "residual stream width", low=8, high=16384)
    num_heads: int = param(8, "attention (query) heads", low=1, high=256)
    num_kv_heads: int = param(4, "key/value heads (grouped-query attention)", low=1, high=256)
    mlp_mult: int = param(2, "MLP hidden width as a multiple of model_dim", low=1, high=16)
    rope_base: float = param(10000.0, "RoPE frequency base", low=1.0)
    logit_softcap: float = param(30.0, "logits are soft-capped to ±this with tanh", low=1e-3)
    qk_gain_init: float = param(1.5, "initial per-head query gain", low=0.0)
    tied_embed_init_std: float = param(0.005, "init std of the tied embedding", low=0.0, high=1.0)
    matrix_lr: float = param(0.04, "Muon learning rate for block matrices", low=0.0, high=10.0)
    scalar_lr: float = param(0.04, "Adam learning rate for vectors and scalars", low=0.0, high=10.0)
    tied_embed_lr: float = param(0.05, "Adam learning rate for the tied embedding", low=0.0, high=10.0)
    muon_momentum: float = param(0.95, "Muon momentum after warm-up", low=0.0, high=0.9999)
    muon_momentum_warmup_start: float = param(0.85, "Muon momentum at step 0", low=0.0, high=0.9999)
    muon_momentum_warmup_steps: int = param(500, "steps to ramp Muon momentum", low=0)
    muon_backend_steps: int = param(5, "Newton–Schulz iterations per Muon update", low=1, high=20)
    beta1: float = param(0.9, "Adam beta1", low=0.0, high=0.9999)
    beta2: float = param(0.95, "Adam beta2", low=0.0, high=0.99999)
    adam_eps: float = param(1e-8, "Adam epsilon", low=0.0)
    grad_clip_norm: float = param(0.0, "global gradient-norm clip (0 = off)", low=0.0)
    warmdown_steps: int = param(1200, "steps of linear LR decay to 0, timed to end at the wallclock cap", low=0)

    def check(self) -> None:
        """Constraints between fields (each field's own range is checked from its declaration)."""
        if self.model_dim % self.num_heads:
            raise UserError(f"--model-dim {self.model_dim} must be divisible by --num-heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise UserError(f"--num-heads {self.num_heads} must be divisible by --num-kv-heads {self.num_kv_heads}")
        if (self.model_dim // self.num_heads) % 2:
            raise UserError(f"head dim {self.model_dim // self.num_heads} must be even for RoPE; "
                            f"change --model-dim or --num-heads")


@dataclass(frozen=True)
class RecurrentGPTConfig(GPTConfig):
    """The baseline plus depth recurrence: chosen layers repeated in place, sharing their weights."""
    repeat_layers: tuple[int, ...] = param((), "layer indices to repeat in place, e.g. 3,4 (empty: none)", low=0)
    repeat_times: int = param(1, "how many times each repeated layer runs", low=1, high=16)

    def layer_order(self) -> list[int]:
        """[3,4]×2 on 9 layers → 0,1,2,3,3,4,4,5,6,7,8: the effective depth the U-Net skips are built on."""
        return [i for i in range(self.num_layers) for _ in range(self.repeat_times if i in self.repeat_layers else 1)]

    def check(self) -> None:
        super().check()
        bad = [i for i in self.repeat_layers if i >= self.num_layers]
        if bad:
            raise UserError(f"--repeat-layers {bad[0]} is not a layer of a {self.num_layers}-layer model "
                            f"(indices 0..{self.num_layers - 1})")
        if len(set(self.repeat_layers)) != len(self.repeat_layers):
            raise UserError(f"--repeat-layers {','.join(map(str, self.repeat_layers))} names a layer twice")


def block_matrix_shapes(c: GPTConfig) -> dict[str, tuple[int, int]]:
    """(out, in) of each kind of block matrix, as Block builds them."""
    d, kv, hidden = c.model_dim, c.num_kv_heads * (c.model_dim // c.num_heads), c.mlp_mult * c.model_dim
    return {"q": (d, d), "k": (kv, d), "v": (kv, d), "o": (d, d), "fc": (hidden, d), "proj": (d, hidden)}


def rms_norm(x: Tensor) -> Tensor:
    return F.rms_norm(x, (x.size(-1),))


def round_to_bf16_(t: Tensor) -> Tensor:
    """Round a weight's values to bf16 in place, keeping its dtype: train_gpt.py casts its whole model to bf16
    before restoring fp32 matrices, so the challenge's initial weights are bf16 values."""
    with torch.no_grad():
        return t.copy_(t.bfloat16())


class CastedLinear(nn.Linear):
    """Weights stay fp32 for the optimizer; the matmul runs in the activation dtype (bf16 under autocast). The
    initial weights are nn.Linear's, rounded to bf16 values as the challenge's are."""

    def __init__(self, in_features: int, out_features: int, zero_init: bool = False):
        super().__init__(in_features, out_features, bias=False)
        self.zero_init = zero_init
        if zero_init:
            nn.init.zeros_(self.weight)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        round_to_bf16_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.to(x.dtype))


# How a block builds a linear map: (kind, in_features, out_features, zero_init) → module. Kinds are the six
# block matrices q, k, v, o, fc, proj. Low-rank, shared-basis or generated weights swap this one function.
LinearFactory = Callable[[str, int, int, bool], nn.Module]


def casted_linear(kind: str, in_features: int, out_features: int, zero_init: bool) -> nn.Module:
    return CastedLinear(in_features, out_features, zero_init=zero_init)


class Rotary(nn.Module):
    def __init__(self, dim: int, base: float):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)),
                             persistent=False)
        self._cache: tuple[int, torch.device, Tensor, Tensor] | None = None

    def forward(self, seq_len: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        if self._cache is None or self._cache[0] != seq_len or self._cache[1] != device:
            # Positions in inv_freq's dtype, as train_gpt.py: bf16 under the challenge's precision (harness.precision).
            positions = torch.arange(seq_len, device=device, dtype=self.inv_freq.dtype)
            freqs = torch.outer(positions, self.inv_freq.to(device))
            self._cache = (seq_len, device, freqs.cos()[None, None], freqs.sin()[None, None])
        return self._cache[2].to(dtype), self._cache[3].to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, c: GPTConfig, linear: LinearFactory = casted_linear):
        super().__init__()
        self.num_heads, self.num_kv_heads = c.num_heads, c.num_kv_heads
        self.head_dim = c.model_dim // c.num_heads
        kv_dim = c.num_kv_heads * self.head_dim
        self.c_q = linear("q", c.model_dim, c.model_dim, False)
        self.c_k = linear("k", c.model_dim, kv_dim, False)
        self.c_v = linear("v", c.model_dim, kv_dim, False)
        self.proj = linear("o", c.model_dim, c.model_dim, True)
        self.q_gain = nn.Parameter(torch.full((c.num_heads,), c.qk_gain_init))
        self.rotary = Rotary(self.head_dim, c.rope_base)

    def heads_first(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q: (B, T, H, D); k, v: (B, T, Hkv, D) → the same as (B, heads, T, D), q and k RMS-normed and rotated, q
        scaled by its per-head gain: what every attention of the baseline's kind feeds to its kernel."""
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        cos, sin = self.rotary(q.size(2), q.device, q.dtype)
        q, k = apply_rotary(rms_norm(q), cos, sin), apply_rotary(rms_norm(k), cos, sin)
        return q * self.q_gain.to(q.dtype)[None, :, None, None], k, v

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q: (B, T, H, D); k, v: (B, T, Hkv, D) → (B, T, H·D). Shared by variants that build q/k/v their own way."""
        bsz, seqlen = q.shape[:2]
        q, k, v = self.heads_first(q, k, v)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.num_kv_heads != self.num_heads)
        return y.transpose(1, 2).reshape(bsz, seqlen, -1)

    def forward(self, x: Tensor) -> Tensor:
        bsz, seqlen, _ = x.shape
        q = self.c_q(x).reshape(bsz, seqlen, self.num_heads, self.head_dim)
        k = self.c_k(x).reshape(bsz, seqlen, self.num_kv_heads, self.head_dim)
        v = self.c_v(x).reshape(bsz, seqlen, self.num_kv_heads, self.head_dim)
        return self.proj(self.attend(q, k, v))


class MLP(nn.Module):
    """relu² MLP (from modded-nanogpt) with a zero-initialised output projection."""

    def __init__(self, c: GPTConfig, linear: LinearFactory = casted_linear):
        super().__init__()
        self.fc = linear("fc", c.model_dim, c.mlp_mult * c.model_dim, False)
        self.proj = linear("proj", c.mlp_mult * c.model_dim, c.model_dim, True)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(torch.relu(self.fc(x)).square())


class Block(nn.Module):
    def __init__(self, c: GPTConfig, attn: nn.Module | None = None, mlp: nn.Module | None = None,
                 linear: LinearFactory = casted_linear):
        super().__init__()
        self.attn = attn if attn is not None else CausalSelfAttention(c, linear)
        self.mlp = mlp if mlp is not None else MLP(c, linear)
        self.attn_scale = nn.Parameter(torch.ones(c.model_dim))
        self.mlp_scale = nn.Parameter(torch.ones(c.model_dim))
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(c.model_dim), torch.zeros(c.model_dim))))

    def forward(self, x: Tensor, x0: Tensor) -> Tensor:
        mix = self.resid_mix.to(x.dtype)
        x = mix[0] * x + mix[1] * x0
        x = x + self.attn_scale.to(x.dtype) * self.attn(rms_norm(x))
        return x + self.mlp_scale.to(x.dtype) * self.mlp(rms_norm(x))


class GPT(nn.Module):
    """The baseline: embed → U-Net of blocks (first half stores, second half adds back in reverse) → head.

    `blocks` replaces the default blocks; `order` runs them by index (repeats allowed), and the U-Net skips are
    built on that effective depth. A config with `layer_order()` (RecurrentGPTConfig) supplies the order.
    """

    def __init__(self, c: GPTConfig, blocks: list[nn.Module] | None = None, order: list[int] | None = None):
        super().__init__()
        self.config = c
        self.tok_emb = nn.Embedding(c.vocab_size, c.model_dim)
        self.blocks = nn.ModuleList(blocks if blocks is not None else [Block(c) for _ in range(c.num_layers)])
        if order is None:
            order = c.layer_order() if hasattr(c, "layer_order") else list(range(len(self.blocks)))
        self.order = list(order)
        self.skip_weights = nn.Parameter(torch.ones(len(self.order) // 2, c.model_dim))
        # After the blocks, as train_gpt.py's _init_weights: the blocks' inits draw the same random numbers.
        round_to_bf16_(nn.init.normal_(self.tok_emb.weight, mean=0.0, std=c.tied_embed_init_std))

    def embed(self, input_ids: Tensor) -> Tensor:
        return rms_norm(self.tok_emb(input_ids))

    def run_blocks(self, x: Tensor) -> Tensor:
        """Apply the blocks in `self.order` with U-Net skips: the first half stores, the second adds back."""
        x0, skips, n_enc = x, [], len(self.order) // 2
        for depth, i in enumerate(self.order):
            if depth >= n_enc and skips:
                x = x + self.skip_weights[depth - n_enc].to(x.dtype) * skips.pop()
            x = self.apply_block(depth, i, x, x0)
            if depth < n_enc:
                skips.append(x)
        return x

    def apply_block(self, depth: int, index: int, x: Tensor, x0: Tensor) -> Tensor:
        """Block `index` at effective depth `depth`; a variant overrides this to treat repeated passes apart."""
        return self.blocks[index](x, x0)

    def logits(self, x: Tensor) -> Tensor:
        """Final RMSNorm, tied head, tanh soft cap."""
        logits = F.linear(rms_norm(x), self.tok_emb.weight.to(x.dtype))
        cap = self.config.logit_softcap
        return cap * torch.tanh(logits / cap)

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.logits(self.run_blocks(self.embed(input_ids)))
