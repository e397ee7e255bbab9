"""Shared model pieces and the challenge's baseline GPT, which every variant builds on.

The architecture follows parameter-golf's train_gpt.py: tied embeddings, RMS-normed inputs, GQA attention with
q/k RMSNorm, RoPE and a learned per-head q gain, relu² MLPs, learned residual mixes with the block-0 input,
U-Net skips and tanh-soft-capped logits. Variants import from here and change only what is new about them.
The model returns logits; the harness computes every loss and metric from them.

Model options every family inherits through these pieces (GPTConfig's fields; the defaults are the baseline's):
the MLP activation (relu², SwiGLU and GeGLU at a hidden width that keeps parameters and FLOPs equal, GELU,
leaky-relu²), the norm (RMSNorm or LayerNorm, both without learned gains as in the baseline), the residual
branch scales (a vector per branch as in the baseline, a scalar, or none), QK-norm, partial RoPE and its base,
and CoPE (contextual position encoding) in place of RoPE. A family whose own code replaces the piece an option
lives in refuses a non-default value of it (`ignored_options`) instead of silently training without it.
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
CONTROL_TENSOR_PATTERNS = ("attn_scale", "mlp_scale", "resid_mix", "q_gain", "skip_weight", "cope_pos")
GLU_ACTIVATIONS = ("swiglu", "geglu")
# The names of the run axes' choices; harness/artifact.py and harness/evaluation.py implement exactly these.
EXPORT_SCHEMES = ("int8-zlib", "int6-lzma", "int6-zstd", "gptq-zstd", "gptq-hessian-zstd", "mixed-zstd")
EVAL_SCHEMES = ("standard", "sliding", "ttt")


@dataclass(frozen=True)
class GPTConfig:
    """The challenge baseline's shape and optimizer settings; every variant's config extends this one."""
    vocab_size: int = param(1024, "vocabulary size; must equal the dataset tokenizer's", low=2, high=65536)
    num_layers: int = param(9, "transformer blocks", low=1, high=256)
    model_dim: int = param(512, "residual stream width", low=8, high=16384)
    num_heads: int = param(8, "attention (query) heads", low=1, high=256)
    num_kv_heads: int = param(4, "key/value heads (grouped-query attention; 0: one per query head, MHA)",
                              low=0, high=256)
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
    # Model options (module docstring). Left at their defaults they leave the model and the run id unchanged.
    mlp_activation: str = param("relu2", "MLP activation; swiglu/geglu use 2/3 of the hidden width so parameters "
                                "and FLOPs stay equal", choices=("relu2", "swiglu", "geglu", "gelu", "leaky_relu2"))
    norm: str = param("rms", "normalisation of the residual stream (no learned gain either way)",
                      choices=("rms", "layer"))
    residual_scale: str = param("vector", "learned scale on each block branch: per channel, one scalar, or none",
                                choices=("vector", "scalar", "none"))
    qk_norm: bool = param(True, "RMS-normalise queries and keys per head before attention")
    position: str = param("rope", "position encoding: rotary, or CoPE (contextual positions; explicit attention "
                          "matrix, no flash kernel)", choices=("rope", "cope"))
    rope_fraction: float = param(1.0, "share of each head's dimensions that RoPE rotates (0 = no positions)",
                                 low=0.0, high=1.0)
    cope_positions: int = param(64, "CoPE: largest contextual position (positions beyond are clamped)",
                                low=2, high=65536)
    # Trainer options (the records' levers beyond the baseline; defaults are the baseline's, so off).
    muon_weight_decay: float = param(0.0, "decoupled weight decay of the Muon matrices, × the LR each step",
                                     low=0.0, high=1.0)
    adam_weight_decay: float = param(0.0, "decoupled weight decay of the Adam parameters (AdamW when > 0)",
                                     low=0.0, high=1.0)
    min_lr: float = param(0.0, "floor of the warmdown: the LR never drops below this fraction of its base",
                          low=0.0, high=1.0)
    late_qat: float = param(0.0, "late quantisation-aware training: once the LR scale falls below this, every "
                            "step runs forward and backward on the weights as --export stores them (0 = off)",
                            low=0.0, high=1.0)
    # Run axes: how the trained model is stored and how it is scored (harness/artifact.py, harness/evaluation.py).
    export: str = param("int8-zlib", "export scheme of the artifact the cap checks and the score is taken from",
                        choices=EXPORT_SCHEMES)
    export_calibration_batches: int = param(8, "training batches whose inputs weight the clip search of the "
                                            "Hessian-aware export schemes", low=1, high=1024)
    eval: str = param("standard", "evaluation scheme of the score of record: non-overlapping windows, sliding "
                      "windows, or score-first test-time training", choices=EVAL_SCHEMES)
    eval_stride: int = param(64, "sliding (and ttt) evaluation: tokens each window advances; every scored token "
                             "after the first window has seq_len − stride tokens of context", low=1, high=65536)
    ttt_chunk_tokens: int = param(32768, "ttt: validation tokens scored, then trained on, at a time", low=1)
    ttt_epochs: int = param(3, "ttt: passes of SGD over each chunk after it is scored", low=0, high=100)
    ttt_lr: float = param(0.002, "ttt: SGD learning rate (cosine-decayed across chunks)", low=0.0, high=10.0)
    ttt_momentum: float = param(0.9, "ttt: SGD momentum", low=0.0, high=0.9999)

    def __post_init__(self) -> None:
        if self.num_kv_heads == 0:  # MHA at whatever head count the model has, so a preset can ask for it at any size
            object.__setattr__(self, "num_kv_heads", self.num_heads)

    def check(self) -> None:
        """Constraints between fields (each field's own range is checked from its declaration)."""
        if self.model_dim % self.num_heads:
            raise UserError(f"--model-dim {self.model_dim} must be divisible by --num-heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise UserError(f"--num-heads {self.num_heads} must be divisible by --num-kv-heads {self.num_kv_heads}")
        if (self.model_dim // self.num_heads) % 2:
            raise UserError(f"head dim {self.model_dim // self.num_heads} must be even for RoPE; "
                            f"change --model-dim or --num-heads")
        if self.position != "rope" and self.rope_fraction != 1.0:
            raise UserError(f"--rope-fraction {self.rope_fraction} applies to --position rope only; "
                            f"CoPE replaces RoPE (drop one of the two)")


# The options above, with the pieces of this file that carry them: a model none of whose modules of that kind
# runs the shared code ignores the option (see ignored_options).
MODEL_OPTIONS = ("mlp_activation", "norm", "residual_scale", "qk_norm", "position", "rope_fraction",
                 "cope_positions")
TRAINER_OPTIONS = ("muon_weight_decay", "adam_weight_decay", "min_lr", "late_qat")
RUN_AXES = ("export", "export_calibration_batches", "eval", "eval_stride", "ttt_chunk_tokens", "ttt_epochs",
            "ttt_lr", "ttt_momentum")
# Fields added after runs were recorded: left out of run ids and leaderboard keys while at their defaults.
LATER_FIELDS = MODEL_OPTIONS + TRAINER_OPTIONS + RUN_AXES

# The 2026-03-23 record (LeakyReLU² + legal score-first TTT, 1.1194 on 8×H100) as far as the harness's parts go:
# its shape, activation, partial RoPE (16 of 64 dims), optimizer settings, late QAT, clip-searched int6 export and
# TTT scored on sliding windows. Not here: XSA on the last layers, BigramHash, value embeddings, the 1/√(layer+1)
# norm scale and parameter banking (speed only); lzma there, zstd here; its EMA is the weight_average technique.
# Its schedule (warm-up 1500, warmdown 3500 steps) is for ~7,200 steps on 8×H100. A preset of every family.
RECORD_STACK = {
    "num_layers": 11, "mlp_mult": 3, "mlp_activation": "leaky_relu2", "rope_fraction": 0.25,
    "matrix_lr": 0.025, "scalar_lr": 0.025, "tied_embed_lr": 0.035, "muon_momentum": 0.99,
    "muon_momentum_warmup_start": 0.92, "muon_momentum_warmup_steps": 1500, "warmdown_steps": 3500,
    "muon_weight_decay": 0.04, "adam_weight_decay": 0.04, "late_qat": 0.15,
    "export": "gptq-zstd", "eval": "ttt", "eval_stride": 64,
}
SHARED_PRESETS = {"record-stack": RECORD_STACK}


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


def mlp_hidden(c: GPTConfig) -> int:
    """The MLP's hidden width: mlp_mult·model_dim, or 2/3 of it for a gated (GLU) activation, whose three
    matrices then hold the numbers (and cost the FLOPs) of the two (1,048,576 vs 1,049,088 at width 512)."""
    hidden = c.mlp_mult * c.model_dim
    return round(2 * hidden / 3) if c.mlp_activation in GLU_ACTIVATIONS else hidden


def block_matrix_shapes(c: GPTConfig) -> dict[str, tuple[int, int]]:
    """(out, in) of each kind of block matrix, as Block builds them ("gate" only with a GLU activation)."""
    d, kv, hidden = c.model_dim, c.num_kv_heads * (c.model_dim // c.num_heads), mlp_hidden(c)
    shapes = {"q": (d, d), "k": (kv, d), "v": (kv, d), "o": (d, d), "fc": (hidden, d), "proj": (d, hidden)}
    return {**shapes, "gate": (hidden, d)} if c.mlp_activation in GLU_ACTIVATIONS else shapes


def rms_norm(x: Tensor) -> Tensor:
    return F.rms_norm(x, (x.size(-1),))


def normalize(x: Tensor, kind: str = "rms") -> Tensor:
    """The residual stream's norm: RMSNorm (the baseline) or LayerNorm, neither with a learned gain."""
    return rms_norm(x) if kind == "rms" else F.layer_norm(x, (x.size(-1),))


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
    """Rotate the first 2·cos.size(-1) dimensions of x (all of them with full RoPE); the rest pass unchanged."""
    half = cos.size(-1)
    rotated = x[..., :2 * half] if 2 * half < x.size(-1) else x
    x1, x2 = rotated[..., :half], rotated[..., half:]
    out = torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)
    return out if rotated is x else torch.cat((out, x[..., 2 * half:]), dim=-1)


def rotary_dims(c: GPTConfig) -> int:
    """How many of a head's dimensions RoPE rotates: an even share rope_fraction of them (0: none)."""
    return 0 if c.position != "rope" else 2 * round(c.model_dim // c.num_heads * c.rope_fraction / 2)


def cope_attention(q: Tensor, k: Tensor, v: Tensor, pos_emb: Tensor) -> Tensor:
    """Causal attention with contextual positions (CoPE, Golovneva et al. 2024, arXiv 2405.18719). q: (B, H, T,
    D); k, v: (B, H, T, D); pos_emb: (P, D). Key j's position seen from query i is the sum of the gates
    sigmoid(q_i·k_m) over m = j..i, a fractional count of the keys since j that the query attends to; its
    embedding is interpolated between the two nearest of P learned ones, and q_i·e(p_ij) joins the logit. Only
    keys up to i enter a query's row, so it is causal; the T×T matrix is explicit (no flash kernel)."""
    t = q.size(-2)
    scores = (q @ k.transpose(-1, -2)) / q.size(-1) ** 0.5
    future = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1)
    scores = scores.masked_fill(future, float("-inf"))
    gates = torch.sigmoid(scores)  # 0 on future keys
    positions = gates.flip(-1).cumsum(-1).flip(-1).clamp(max=pos_emb.size(0) - 1)
    per_position = q @ pos_emb.to(q.dtype).t()  # (B, H, T, P): q_i · e_p for every integer position p
    low = positions.floor()
    frac = positions - low
    low = low.long()
    high = (low + 1).clamp(max=pos_emb.size(0) - 1)
    scores = scores + per_position.gather(-1, low) * (1 - frac) + per_position.gather(-1, high) * frac
    return torch.softmax(scores.float(), dim=-1).to(v.dtype) @ v


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
        self.qk_norm = c.qk_norm
        rotated = rotary_dims(c)
        self.rotary = Rotary(rotated, c.rope_base) if rotated else None
        if c.position == "cope":  # zero-initialised as in the paper: training starts position-free
            self.cope_pos = nn.Parameter(torch.zeros(c.cope_positions, self.head_dim))

    def heads_first(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q: (B, T, H, D); k, v: (B, T, Hkv, D) → the same as (B, heads, T, D), q and k RMS-normed and rotated, q
        scaled by its per-head gain: what every attention of the baseline's kind feeds to its kernel."""
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.qk_norm:
            q, k = rms_norm(q), rms_norm(k)
        if self.rotary is not None:
            cos, sin = self.rotary(q.size(2), q.device, q.dtype)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        return q * self.q_gain.to(q.dtype)[None, :, None, None], k, v

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q: (B, T, H, D); k, v: (B, T, Hkv, D) → (B, T, H·D). Shared by variants that build q/k/v their own way."""
        bsz, seqlen = q.shape[:2]
        q, k, v = self.heads_first(q, k, v)
        if hasattr(self, "cope_pos"):
            groups = self.num_heads // self.num_kv_heads
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
            y = cope_attention(q, k, v, self.cope_pos)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                               enable_gqa=self.num_kv_heads != self.num_heads)
        return y.transpose(1, 2).reshape(bsz, seqlen, -1)

    def forward(self, x: Tensor) -> Tensor:
        bsz, seqlen, _ = x.shape
        q = self.c_q(x).reshape(bsz, seqlen, self.num_heads, self.head_dim)
        k = self.c_k(x).reshape(bsz, seqlen, self.num_kv_heads, self.head_dim)
        v = self.c_v(x).reshape(bsz, seqlen, self.num_kv_heads, self.head_dim)
        return self.proj(self.attend(q, k, v))


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu2": lambda h: torch.relu(h).square(),
    "leaky_relu2": lambda h: F.leaky_relu(h, 0.5).square(),  # slope 0.5 on negatives, then squared
    "gelu": lambda h: F.gelu(h, approximate="tanh"),
    "swiglu": F.silu,  # of the gate, times the up projection
    "geglu": lambda h: F.gelu(h, approximate="tanh"),
}


class MLP(nn.Module):
    """relu² MLP (from modded-nanogpt) with a zero-initialised output projection, or another activation
    (GPTConfig.mlp_activation); a gated one adds a "gate" matrix at 2/3 of the hidden width (mlp_hidden)."""

    def __init__(self, c: GPTConfig, linear: LinearFactory = casted_linear):
        super().__init__()
        hidden = mlp_hidden(c)
        self.activation = c.mlp_activation
        self.fc = linear("fc", c.model_dim, hidden, False)
        if c.mlp_activation in GLU_ACTIVATIONS:
            self.gate = linear("gate", c.model_dim, hidden, False)
        self.proj = linear("proj", hidden, c.model_dim, True)

    def forward(self, x: Tensor) -> Tensor:
        act = ACTIVATIONS[self.activation]
        h = act(self.gate(x)) * self.fc(x) if self.activation in GLU_ACTIVATIONS else act(self.fc(x))
        return self.proj(h)


class Block(nn.Module):
    def __init__(self, c: GPTConfig, attn: nn.Module | None = None, mlp: nn.Module | None = None,
                 linear: LinearFactory = casted_linear):
        super().__init__()
        self.attn = attn if attn is not None else CausalSelfAttention(c, linear)
        self.mlp = mlp if mlp is not None else MLP(c, linear)
        self.norm = c.norm
        scale = {"vector": c.model_dim, "scalar": 1, "none": 0}[c.residual_scale]
        self.attn_scale = nn.Parameter(torch.ones(scale)) if scale else None
        self.mlp_scale = nn.Parameter(torch.ones(scale)) if scale else None
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(c.model_dim), torch.zeros(c.model_dim))))

    def forward(self, x: Tensor, x0: Tensor) -> Tensor:
        mix = self.resid_mix.to(x.dtype)
        x = mix[0] * x + mix[1] * x0
        x = x + scaled(self.attn_scale, self.attn(normalize(x, self.norm)))
        return x + scaled(self.mlp_scale, self.mlp(normalize(x, self.norm)))


def scaled(scale: Tensor | None, branch: Tensor) -> Tensor:
    """A block branch times its learned scale (GPTConfig.residual_scale; None: unscaled)."""
    return branch if scale is None else scale.to(branch.dtype) * branch


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
        return normalize(self.tok_emb(input_ids), self.config.norm)

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
        logits = F.linear(normalize(x, self.config.norm), self.tok_emb.weight.to(x.dtype))
        cap = self.config.logit_softcap
        return cap * torch.tanh(logits / cap)

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.logits(self.run_blocks(self.embed(input_ids)))


def ignored_options(model: nn.Module, c: GPTConfig) -> list[str]:
    """The model options set away from their defaults that no module of `model` carries out: each lives in a
    piece of this file (the MLP, the Block's forward, the attention's forward or its q/k preparation), and a
    family whose own subclass replaces that piece does not honour it. Returns the flags, e.g. ["--norm layer"]."""
    defaults = GPTConfig()
    modules = list(model.modules())

    def runs(base: type, *methods: str) -> bool:  # every module of that kind runs the shared code
        kind = [m for m in modules if isinstance(m, base)]
        return bool(kind) and all(getattr(type(m), name) is getattr(base, name) for m in kind for name in methods)

    runs_mlp, runs_block, runs_attention = runs(MLP, "forward"), runs(Block, "forward"), runs(
        CausalSelfAttention, "forward", "attend", "heads_first")
    runs_gpt = isinstance(model, GPT) and type(model).embed is GPT.embed and type(model).logits is GPT.logits
    where = {"mlp_activation": runs_mlp, "norm": runs_block and runs_gpt, "residual_scale": runs_block,
             "qk_norm": runs_attention, "position": runs_attention, "rope_fraction": runs_attention,
             "cope_positions": runs_attention}
    return [f"--{name.replace('_', '-')} {getattr(c, name)}" for name in MODEL_OPTIONS
            if getattr(c, name, getattr(defaults, name)) != getattr(defaults, name) and not where[name]]
