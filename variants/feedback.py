"""feedback — every layer attends to a memory of earlier positions formed from all layers' states.

The Feedback Transformer (Fan et al. 2020, arXiv 2002.09402): the memory vector of position τ is a learned
softmax-weighted sum over layers, m_τ = Σ_l softmax(w)_l · x_τ^l (l = 0 the embedding, 1..L the blocks' outputs),
and every layer takes its keys and values from that one memory instead of from its own layer's states, so even
the lowest layer sees the top layers' view of the past. Each layer keeps its own key/value projections (the
paper also shares them across layers) and the baseline's q/k RMSNorm, RoPE (a memory vector at its position),
q gain and U-Net skips. Stored: the baseline's numbers plus num_layers + 1 memory weights.

Chunked (the fast default, preset chunked64) is feedback from previous chunks only: positions run in chunks of
`chunk_len`; within a chunk each layer attends causally to the chunk's own same-layer states, as a standard
transformer does, and to the memory of every position in earlier chunks, formed once those chunks have run all
layers. Positions of one chunk see no top-down state of each other; with chunk_len ≥ seq_len the model is the
baseline. chunk_len 1 (preset exact) is the paper's recurrence, not an approximation of it: position by position,
the memory of t ready only after all layers of t ran, layer l of t attending to [m_0..m_{t−1}; x_t^l]
(tests/test_recurrence.py checks both against a computation from the definition). It runs seq_len sequential
steps, for small sizes and analysis: more than MAX_SEQUENTIAL_STEPS (256) chunks per sequence are refused.

Per token against the baseline: the same attention lengths (keys at every earlier position), plus one key/value
projection of the memory per layer (≈ +14% matmul work at full size) and the layer mix. On a GPU the chunks run
one after another (16 at seq_len 1024) with an explicit mask after the first chunk, so flash attention cannot
take those calls (the run records the fallback); chunk_len 1 is seq_len × num_layers tiny steps. Expected: close to the
baseline per step, some gain from top-down context across chunks, paid for in step time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.config import param
from harness.errors import UserError
from harness.model import GPT, Block, CausalSelfAttention, GPTConfig, apply_rotary, rms_norm
from harness.registry import register

MAX_SEQUENTIAL_STEPS = 256  # chunks per sequence, each a step of the unrolled graph (chunk_len 1: seq_len ≤ 256)


@dataclass(frozen=True)
class FeedbackConfig(GPTConfig):
    chunk_len: int = param(64, "positions per chunk; a chunk reads the feedback memory of earlier chunks only "
                           "(1: the paper's exact position-by-position recurrence, slow)", low=1, high=65536)


class FeedbackAttention(CausalSelfAttention):
    """Queries and the current chunk's keys/values from the layer's states; earlier positions' keys/values from
    the shared memory, projected by this layer's c_k and c_v."""

    def rotary_at(self, start: int, n: int, seq_len: int, like: Tensor) -> tuple[Tensor, Tensor]:
        cos, sin = self.rotary(seq_len, like.device, like.dtype)  # cached for the whole sequence
        return cos[:, :, start:start + n], sin[:, :, start:start + n]

    def keys_values(self, h: Tensor, start: int, seq_len: int) -> tuple[Tensor, Tensor]:
        """h (B, n, d), normed, at positions start.. → keys (normed, rotated) and values, each (B, Hkv, n, D)."""
        bsz, n, _ = h.shape
        k = self.c_k(h).reshape(bsz, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.c_v(h).reshape(bsz, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return apply_rotary(rms_norm(k), *self.rotary_at(start, n, seq_len, k)), v

    def forward(self, h: Tensor, memory: tuple[Tensor, Tensor] | None, seq_len: int) -> Tensor:
        bsz, n, _ = h.shape
        start = 0 if memory is None else memory[0].size(2)
        q = self.c_q(h).reshape(bsz, n, self.num_heads, self.head_dim).transpose(1, 2)
        q = apply_rotary(rms_norm(q), *self.rotary_at(start, n, seq_len, q))
        q = q * self.q_gain.to(q.dtype)[None, :, None, None]
        k, v = self.keys_values(h, start, seq_len)
        mask = None
        if memory is not None:
            k, v = torch.cat((memory[0], k), dim=2), torch.cat((memory[1], v), dim=2)
            if n > 1:  # query i (position start + i) sees keys 0..start + i
                mask = torch.ones(n, start + n, dtype=torch.bool, device=h.device).tril(start)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=memory is None and n > 1,
                                           enable_gqa=self.num_kv_heads != self.num_heads)
        return self.proj(y.transpose(1, 2).reshape(bsz, n, -1))


class FeedbackBlock(Block):
    """The baseline block, its attention reading the feedback memory."""

    def forward(self, x: Tensor, x0: Tensor, memory: tuple[Tensor, Tensor] | None, seq_len: int) -> Tensor:
        mix = self.resid_mix.to(x.dtype)
        x = mix[0] * x + mix[1] * x0
        x = x + self.attn_scale.to(x.dtype) * self.attn(rms_norm(x), memory, seq_len)
        return x + self.mlp_scale.to(x.dtype) * self.mlp(rms_norm(x))


class FeedbackTransformer(GPT):
    def __init__(self, c: FeedbackConfig):
        super().__init__(c, blocks=[FeedbackBlock(c, attn=FeedbackAttention(c)) for _ in range(c.num_layers)])
        self.memory_logits = nn.Parameter(torch.zeros(c.num_layers + 1))  # softmax(w): each layer's share of m

    def column(self, x0: Tensor, memories: list, seq_len: int) -> list[Tensor]:
        """All layers over one chunk (U-Net skips as the baseline's): the states x^0..x^L of its positions."""
        x, skips, states, n_enc = x0, [], [x0], len(self.blocks) // 2
        for i, block in enumerate(self.blocks):
            if i >= n_enc and skips:
                x = x + self.skip_weights[i - n_enc].to(x.dtype) * skips.pop()
            x = block(x, x0, memories[i], seq_len)
            if i < n_enc:
                skips.append(x)
            states.append(x)
        return states

    def forward(self, input_ids: Tensor) -> Tensor:
        seq_len, size = input_ids.size(1), self.config.chunk_len
        if -(-seq_len // size) > MAX_SEQUENTIAL_STEPS:
            least = -(-seq_len // MAX_SEQUENTIAL_STEPS)
            raise UserError(f"feedback runs {-(-seq_len // size)} sequential chunks at seq_len {seq_len}, more than "
                            f"{MAX_SEQUENTIAL_STEPS}: raise --chunk-len to at least {least}")
        x0 = self.embed(input_ids)
        weights = torch.softmax(self.memory_logits, dim=0).to(x0.dtype)
        memories: list[tuple[Tensor, Tensor] | None] = [None] * len(self.blocks)
        outputs = []
        for start in range(0, seq_len, size):
            end = min(start + size, seq_len)
            states = self.column(x0[:, start:end], memories, seq_len)
            outputs.append(states[-1])
            if end == seq_len:  # the last chunk's memory is never read
                break
            memory = rms_norm(torch.einsum("l,lbtd->btd", weights, torch.stack(states)))
            for i, block in enumerate(self.blocks):
                k, v = block.attn.keys_values(memory, start, seq_len)
                memories[i] = (k, v) if memories[i] is None else (torch.cat((memories[i][0], k), dim=2),
                                                                  torch.cat((memories[i][1], v), dim=2))
        x = torch.cat(outputs, dim=1)
        if len(outputs) == 1:  # no memory was read: keep its weights in the graph (DDP needs every gradient)
            x = x + 0.0 * self.memory_logits.sum().to(x.dtype)
        return self.logits(x)


register("feedback", config=FeedbackConfig, build=FeedbackTransformer, doc=__doc__,
         presets={"chunked64": {"chunk_len": 64}, "exact": {"chunk_len": 1}})
