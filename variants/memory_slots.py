"""memory_slots — learned working-memory slots that tokens read with attention and write to through gates.

The catalogue's "Working Memory Slots" (in the spirit of memory tokens, Burtsev et al. 2020, arXiv
2006.11527): a memory module after the last block and every `memory_every`-th block before it holds
`num_slots` learned slots of width `slot_dim`. A token reads them with multi-head attention (query W_q·x;
keys the RMS-normed slots, values the slots) and adds W_o·read (zero-initialised) to its residual stream.
Every token writes: a gate g = sigmoid(W_g·x) per slot and a value v = W_v·x; a slot holds the gated average
S_n = (S0_n + Σ g_n·v) / (1 + Σ g_n) of its learned initial value S0_n and the writes it has received.

The catalogue writes the mean over the whole sequence, which lets every token see the future. Causal forms:
`chunked` (default) — a token reads the slots as written by every token of the *previous* chunks of
`chunk_len` (64) positions: one slot state per chunk from per-chunk sums of g⊗v and a cumulative sum over
chunks, no loop over positions; tokens of the first chunk read S0. `running` — the slots as written by every
token ≤ t: a slot state per position, num_slots × slot_dim numbers per token and module (16 × 128, four
times the residual width, in fp32): 490 KiB of saved activations per token against the baseline's 263
(chunked: 295), measured at one 1024-token sequence. It is for small runs.

Stored (nine blocks would pass the cap, so eight at width 512): per module 3·slot_dim·d + num_slots·(d +
slot_dim) numbers; 16,877,632 in all for s16 (6,085,376 artifact bytes at init), 16,959,552 for s32
(6,215,778); the baseline stores 17,059,912. Compute: 160.1 MFLOP per token for a training step against
the baseline's 168.3 (torch's FLOP counter, 1024 tokens): a module's matrices are about a ninth of a
block's. The read is a non-causal SDPA call (a chunk's queries × its slots), which flash attention takes.
Expected: near the baseline; a gain would say a summary of earlier chunks is worth more than a ninth block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness import causal_pool
from harness.config import param
from harness.errors import UserError
from harness.model import GPT, CastedLinear, GPTConfig, rms_norm
from harness.optim import ParamGroup, default_param_groups
from harness.registry import register


@dataclass(frozen=True)
class MemorySlotsConfig(GPTConfig):
    num_layers: int = param(8, "transformer blocks (8: the memory modules take a ninth block's bytes)",
                            low=1, high=256)
    num_slots: int = param(16, "learned memory slots per memory module", low=1, high=1024)
    slot_dim: int = param(0, "width of a slot (0: model_dim / 4)", low=0, high=16384)
    memory_every: int = param(1, "a memory module after every this many blocks, counted back from the last "
                              "(1: after each)", low=1, high=256)
    mode: str = param("chunked", "chunked: tokens read the slots written by earlier chunks; running: by every "
                      "token up to their own (a slot state per position: memory-heavy)", choices=("chunked", "running"))
    chunk_len: int = param(64, "positions per write chunk in chunked mode", low=1, high=65536)

    def width(self) -> int:
        return self.slot_dim or max(self.model_dim // 4, 1)

    def check(self) -> None:
        super().check()
        if self.width() % self.num_heads:
            raise UserError(f"slot width {self.width()} (--slot-dim) must be divisible by --num-heads "
                            f"{self.num_heads}: the read has one head per attention head")


class SlotMemory(nn.Module):
    def __init__(self, c: MemorySlotsConfig):
        super().__init__()
        k = c.width()
        self.heads, self.mode, self.chunk_len = c.num_heads, c.mode, c.chunk_len
        self.slots = nn.Parameter(torch.randn(c.num_slots, k))  # S0; its values are RMS-scale like the writes
        self.query = CastedLinear(c.model_dim, k)
        self.write_gate = CastedLinear(c.model_dim, c.num_slots)
        self.write_value = CastedLinear(c.model_dim, k)
        self.out = CastedLinear(k, c.model_dim, zero_init=True)

    def forward(self, x: Tensor) -> Tensor:
        xn = rms_norm(x)
        gate = torch.sigmoid(self.write_gate(xn).float())  # (B, T, N)
        value = self.write_value(xn).float()  # (B, T, k)
        if self.mode == "chunked":  # per chunk Σ g⊗v, never a (B, T, N, k) tensor
            g, v = causal_pool.to_chunks(gate, self.chunk_len), causal_pool.to_chunks(value, self.chunk_len)
            written = causal_pool.previous_chunks(torch.einsum("bcsn,bcsk->bcnk", g, v))
            slots = self.slots_after(written, causal_pool.previous_chunks(g.sum(dim=2)))  # (B, n, N, k)
            read = self.read_chunks(self.query(xn), slots.to(x.dtype))
        else:
            written = causal_pool.running_sum(gate.unsqueeze(-1) * value.unsqueeze(2))  # (B, T, N, k)
            slots = self.slots_after(written, causal_pool.running_sum(gate))
            read = self.read_positions(self.query(xn), slots.to(x.dtype))
        return self.out(read)

    def slots_after(self, written: Tensor, gate_sum: Tensor) -> Tensor:
        """The gated average of S0 (weight 1) and the writes a slot received."""
        return (self.slots.float() + written) / (1.0 + gate_sum.unsqueeze(-1))

    def read_chunks(self, q: Tensor, slots: Tensor) -> Tensor:
        """q (B, T, k) of each chunk attends to its chunk's slots (B, n, N, k), one SDPA call over all chunks."""
        bsz, seq_len, k = q.shape
        n, num_slots, h = slots.size(1), slots.size(2), self.heads
        q = F.pad(q, (0, 0, 0, n * self.chunk_len - seq_len)).view(bsz * n, self.chunk_len, h, k // h)
        s = slots.reshape(bsz * n, num_slots, h, k // h).transpose(1, 2)
        y = F.scaled_dot_product_attention(rms_norm(q.transpose(1, 2)), rms_norm(s), s)
        return y.transpose(1, 2).reshape(bsz, n * self.chunk_len, k)[:, :seq_len]

    def read_positions(self, q: Tensor, slots: Tensor) -> Tensor:
        """q (B, T, k) at position t attends to the slots as they are at t (B, T, N, k)."""
        bsz, seq_len, k = q.shape
        h = self.heads
        q = rms_norm(q.view(bsz, seq_len, h, k // h))
        s = slots.view(bsz, seq_len, -1, h, k // h)
        scores = torch.einsum("bthd,btnhd->bthn", q, rms_norm(s)) * (k // h) ** -0.5
        return torch.einsum("bthn,btnhd->bthd", scores.softmax(dim=-1), s).reshape(bsz, seq_len, k)


class MemorySlotsGPT(GPT):
    def __init__(self, c: MemorySlotsConfig):
        super().__init__(c)
        # Counted back from the last block, so that a model of any depth has at least one memory module.
        self.memory_layers = [i for i in range(c.num_layers) if (c.num_layers - 1 - i) % c.memory_every == 0]
        self.memories = nn.ModuleDict({str(i): SlotMemory(c) for i in self.memory_layers})

    def apply_block(self, depth: int, index: int, x: Tensor, x0: Tensor) -> Tensor:
        x = self.blocks[index](x, x0)
        return x + self.memories[str(index)](x) if index in self.memory_layers else x

    def param_groups(self, c: MemorySlotsConfig) -> list[ParamGroup]:
        """The baseline's split, except that the initial slots (rows like an embedding's) train with the
        embedding's Adam rather than Muon."""
        slots = [m.slots for m in self.memories.values()]
        return default_param_groups(self, c, ParamGroup("memory_slots", slots, "adam", c.tied_embed_lr))


register("memory_slots", config=MemorySlotsConfig, build=MemorySlotsGPT, doc=__doc__,
         presets={"s16": {"num_slots": 16}, "s32": {"num_slots": 32}})
