"""The training loader: streams shards in order, forever, and gives each rank a disjoint span of each batch.

Every optimizer step consumes the same `tokens_per_step` tokens from the stream whatever the number of ranks
and accumulation steps: micro-step m of rank r reads the r-th span of the m-th chunk, so one process with
accumulation k·n sees exactly the tokens that k processes with accumulation n see together (the challenge's
scheme, generalised from 8 = ranks × accumulation to any split).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from harness.data.shards import read_shard
from harness.errors import UserError


class TokenStream:
    def __init__(self, files: tuple[Path, ...], vocab_size: int | None = None):
        self.files, self.vocab_size = files, vocab_size
        self.file_index = 0
        self.tokens = self.load(0)
        self.pos = 0

    def load(self, index: int) -> np.ndarray:
        """A shard's tokens, checked once against the vocabulary as it is opened (a token id past the embedding
        would otherwise fail deep inside the model, or silently on a GPU)."""
        tokens = read_shard(self.files[index])
        if self.vocab_size is not None and tokens.size and int(tokens.max()) >= self.vocab_size:
            raise UserError(f"training shard {self.files[index]} holds token id {int(tokens.max())}, outside the "
                            f"{self.vocab_size}-token vocabulary; it was made with another tokenizer")
        return tokens

    def take(self, n: int) -> np.ndarray:
        chunks, remaining, empty_loads = [], n, 0
        while remaining > 0:
            available = self.tokens.size - self.pos
            if available <= 0:
                empty_loads += 1
                if empty_loads > len(self.files):  # a whole cycle gave nothing: never loop forever on empty shards
                    raise UserError(f"the training shards ({self.files[0].parent}) hold no tokens")
                self.file_index = (self.file_index + 1) % len(self.files)
                self.tokens, self.pos = self.load(self.file_index), 0
                continue
            k = min(remaining, available)
            chunks.append(self.tokens[self.pos:self.pos + k])
            empty_loads = 0
            self.pos += k
            remaining -= k
        return np.concatenate(chunks) if len(chunks) > 1 else np.asarray(chunks[0])


def plan_accumulation(tokens_per_step: int, micro_batch_tokens: int, seq_len: int, world_size: int) -> int:
    """Gradient-accumulation steps so that each rank's micro-batch is whole sequences and ≤ micro_batch_tokens
    where possible; the tokens per optimizer step never change."""
    if tokens_per_step % (seq_len * world_size):
        raise UserError(f"tokens_per_step {tokens_per_step} is not divisible by seq_len {seq_len} × {world_size} "
                        f"rank(s); choose a batch that is a multiple of {seq_len * world_size}")
    seqs_per_rank = tokens_per_step // (seq_len * world_size)
    target = max(1, micro_batch_tokens // seq_len)
    return next(a for a in range(1, seqs_per_rank + 1) if seqs_per_rank % a == 0 and seqs_per_rank // a <= target)


class DistributedTokenLoader:
    def __init__(self, files: tuple[Path, ...], rank: int, world_size: int, device: torch.device,
                 vocab_size: int | None = None):
        self.files, self.rank, self.world_size, self.device = files, rank, world_size, device
        self.stream = TokenStream(files, vocab_size)

    def next_batch(self, tokens_per_step: int, seq_len: int, accumulation: int) -> tuple[torch.Tensor, torch.Tensor]:
        local = tokens_per_step // (self.world_size * accumulation)
        span = local + 1  # one extra token so targets are inputs shifted by one
        chunk = self.stream.take(span * self.world_size)
        mine = torch.from_numpy(chunk[self.rank * span:(self.rank + 1) * span].astype(np.int64))
        x = mine[:-1].reshape(-1, seq_len)
        y = mine[1:].reshape(-1, seq_len)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
