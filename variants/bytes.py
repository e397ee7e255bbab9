"""bytes — a byte-level model: byte blocks pool bytes into patches, a latent transformer runs on the patches.

In the spirit of the Byte Latent Transformer (Pagnoni et al. 2024, arXiv 2412.09871), at the challenge's size.
It reads the byte form of the budget's dataset (harness/data/bytes.py: the source's tokens decoded to byte260,
so val_bpb is over the same bytes the source's token models are scored on). A local encoder of
`encoder_layers` byte-level blocks; a boundary at byte t ends a patch; each patch's states are mean-pooled
(then normed) into one vector; the `num_layers` latent blocks (the baseline's U-Net, the bulk of the numbers)
run causally on [null, patch 0, patch 1, …]; byte t adds the latent output of the last patch that ended at or
before t (the learned null before any has) to its encoder state, so it never sees a patch holding a byte after
t; `decoder_layers` byte blocks and the tied head give the logits. BLT's encoder and decoder cross-attend
between bytes and patches and its encoder adds hashed n-gram embeddings; here pooling is a mean and the
decoder adds the patch state (harness/shortening.py's causal segment pooling, as token_pooling).

Patching. `fixed`: a patch ends every patch_size bytes. `entropy` (BLT's "approximate monotonic" rule): a patch
also ends at t when the next-byte entropy H_t rises over H_{t-1} by more than entropy_threshold nats, so a
new patch starts at a byte that is hard to predict; patches never cross the fixed grid of patch_size. The
entropy model is the local encoder itself read through the tied head, trained jointly by its own next-byte
loss (training only, entropy_weight); boundaries are hard and pass no gradient. H_t depends on bytes ≤ t.
At init every H_t is about ln 260, so patches start as the grid's. Static shapes: patches go into
ceil(T·patch_buffer) slots (fixed: exactly the T/patch_size patches); bytes of patches past them read the
last slot (still causal). The latent computes every slot densely; a varlen kernel would compute only the
filled ones. metrics(): mean_patch_bytes, latent_slots_filled, overflow_byte_fraction.

Stored at full size (1 + 7 + 1 blocks × 512, vocab 260): 16,668,744 numbers (baseline 17,059,912: the
260-row embedding saves 391,168). Compute per byte: 2 byte-level blocks + 7 latent blocks on a quarter of the
positions = 3.75 block-equivalents, and a 260-wide head; the baseline spends 9 blocks and a 1024-wide head
per token, 3.7 per byte at builtin's 2.45 bytes a token. A seq_len of bytes is ~2.5× less text than of
tokens (the smoke budget's 256 bytes: ~100 tokens of context), and a step of tokens_per_step bytes sees 2.5×
less text. Expected: worse than the baseline at equal steps, the gap closing with longer contexts (BLT's
regime is far larger); entropy patching spends latent steps where bytes are hard. Entropy mode computes
ceil(T·patch_buffer) latent slots (0.375: 2 + 7·0.375 = 4.6 block-equivalents per byte, where the filled
ones, 6.3 bytes a patch after a smoke minute, need 3.1) and a second 260-wide head and softmax per byte.
On a GPU the scatter-pooling and the gather are small beside the blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.config import param
from harness.errors import UserError
from harness.model import GPT, Block, GPTConfig, normalize
from harness.registry import register
from harness.shortening import expand_segments, pool_segments


@dataclass(frozen=True)
class BytesConfig(GPTConfig):
    vocab_size: int = param(260, "byte260: 256 bytes and 4 specials (the dataset's byte form)", low=2, high=65536)
    num_layers: int = param(7, "latent blocks over patches (the byte-level encoder and decoder are extra)",
                            low=1, high=256)
    encoder_layers: int = param(1, "byte-level blocks before pooling into patches", low=0, high=64)
    decoder_layers: int = param(1, "byte-level blocks after the latent, before the head", low=0, high=64)
    patching: str = param("fixed", "fixed: a patch every patch_size bytes; entropy: also where the next-byte "
                          "entropy rises by more than entropy_threshold (BLT)", choices=("fixed", "entropy"))
    patch_size: int = param(4, "bytes per patch (fixed); the grid entropy patches never cross", low=1, high=256)
    entropy_threshold: float = param(0.5, "entropy: a patch ends where H_t - H_{t-1} exceeds this (nats)", low=0.0)
    patch_buffer: float = param(0.375, "entropy: latent slots per byte; patches past ceil(T * this) are left out",
                                low=0.01, high=1.0)
    entropy_weight: float = param(0.1, "entropy: weight of the encoder's training-only next-byte loss", low=0.0)

    def check(self) -> None:
        super().check()
        if self.patching == "entropy" and self.patch_buffer * self.patch_size < 1:
            raise UserError(f"--patch-buffer {self.patch_buffer} cannot hold the patches of the --patch-size "
                            f"{self.patch_size} grid alone; raise it to at least {1 / self.patch_size:.3g}")


class BytePatchGPT(GPT):
    def __init__(self, c: BytesConfig):
        super().__init__(c)  # self.blocks: the latent blocks, with the baseline's U-Net skips
        self.encoder = nn.ModuleList(Block(c) for _ in range(c.encoder_layers))
        self.decoder = nn.ModuleList(Block(c) for _ in range(c.decoder_layers))
        self.null = nn.Parameter(torch.randn(c.model_dim))  # unit RMS, as the normed pooled patches
        # bytes, completed patches, latent slots, filled slots, bytes past the slots (of the last evaluation)
        self.register_buffer("eval_stats", torch.zeros(5, dtype=torch.float64), persistent=False)

    def capacity(self, seq_len: int) -> int:
        c = self.config
        if c.patching == "fixed":
            return math.ceil(seq_len / c.patch_size)
        return math.ceil(seq_len * c.patch_buffer)

    def patch_ends(self, input_ids: Tensor, guess: Tensor | None) -> Tensor:
        """(B, T) 0/1: 1 where a patch ends. From positions alone (fixed), or also from the entropy of the
        encoder's next-byte guess at t and t − 1 (entropy)."""
        c = self.config
        t = torch.arange(input_ids.size(1), device=input_ids.device)
        ends = ((t + 1) % c.patch_size == 0).expand(input_ids.shape)
        if guess is not None:
            logp = F.log_softmax(guess.detach().float(), dim=-1)
            entropy = -(logp.exp() * logp).sum(-1)
            rise = torch.diff(entropy, dim=1, prepend=entropy[:, :1])
            ends = ends | (rise > c.entropy_threshold)
        return ends.float()

    def forward(self, input_ids: Tensor):
        c = self.config
        x0 = self.embed(input_ids)
        h = x0
        for block in self.encoder:
            h = block(h, x0)
        guess = self.logits(h) if c.patching == "entropy" else None
        ends = self.patch_ends(input_ids, guess)
        capacity = self.capacity(input_ids.size(1))
        patches = normalize(pool_segments(h, ends, capacity), c.norm)
        latent = self.run_blocks(torch.cat((self.null.to(h.dtype).expand(h.size(0), 1, -1), patches), dim=1))
        y = h + expand_segments(latent, ends)
        for block in self.decoder:
            y = block(y, x0)
        logits = self.logits(y)
        if not self.training:
            self.count(ends, capacity)
            return logits
        if guess is None:
            return logits
        next_byte = F.cross_entropy(guess[:, :-1].float().reshape(-1, guess.size(-1)), input_ids[:, 1:].reshape(-1))
        return logits, {"entropy_model": c.entropy_weight * next_byte}

    @torch.no_grad()
    def count(self, ends: Tensor, capacity: int) -> None:
        done = ends.sum(1)
        started = done + (ends[:, -1] == 0).float()  # and the unfinished patch after the last end
        overflow = ((ends.cumsum(1) - ends) >= capacity).sum()
        self.eval_stats += torch.stack([ends.new_tensor(ends.numel()), done.sum(), ends.new_tensor(ends.size(0) * (
            capacity + 1)), (1 + started.clamp(max=capacity)).sum(), overflow.float()]).double()

    def train(self, mode: bool = True):
        if not mode:  # each evaluation starts by switching to eval mode: count its bytes afresh
            self.eval_stats.zero_()
        return super().train(mode)

    def metrics(self) -> dict[str, float]:
        num_bytes, patches, slots, filled, overflow = self.eval_stats.tolist()
        if not num_bytes:
            return {}
        return {"mean_patch_bytes": num_bytes / max(patches, 1.0), "latent_slots_filled": filled / slots,
                "overflow_byte_fraction": overflow / num_bytes}


register("bytes", config=BytesConfig, build=BytePatchGPT, doc=__doc__, data="bytes", presets={
    "entropy": {"patching": "entropy", "patch_size": 8},  # BLT's entropy patches, at most 8 bytes
    "p8": {"patch_size": 8},  # fixed patches twice as long: half the latent positions
})
