"""The score, computed in one place: val_loss (mean token cross-entropy, nats) and val_bpb, as the challenge does.

val_bpb = (val_loss / ln 2) × (target tokens / target bytes) over the validation split (or the budget's cap),
cut into sequences of seq_len; every rank scores a disjoint run of sequences and the sums are all-reduced.
Variants return logits; only the harness turns them into losses, so no variant can change how it is scored.
`evaluate` is the challenge's standard scheme; harness/evaluation.py adds sliding windows and test-time training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from harness import hooks
from harness.data.shards import read_shard
from harness.data.tokenizers import ByteTables
from harness.errors import UserError


def autocast(device: torch.device, dtype: torch.dtype | None):
    """bf16 autocast on CUDA (dtype given); a no-op context on CPU (dtype None)."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def split_output(out) -> tuple[Tensor, dict[str, Tensor]]:
    """A model returns logits, or (logits, {name: training-only loss term})."""
    if isinstance(out, Tensor):
        return out, {}
    logits, extra = out
    return logits, dict(extra or {})


IGNORED_TARGET = -100  # F.cross_entropy's default ignore_index: a target that is context, not scored


class ScoredModel(nn.Module):
    """Wraps a variant's model so the loss is the harness's: cross-entropy of its logits against the targets.

    Training adds the variant's training-only terms; evaluation returns the summed token loss and nothing else.
    """

    def __init__(self, model: nn.Module, techniques: nn.Module | None = None):
        super().__init__()
        self.model = model
        self.techniques = techniques  # harness.techniques.TechniqueStack: training only, never in evaluation

    def forward(self, x: Tensor, y: Tensor, train: bool = True,
                score_from: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """score_from (evaluation only): per row, the first position whose target is scored; the positions
        before it are context that an earlier window scored already (sliding windows, harness/evaluation.py)."""
        if score_from is not None:
            if train:
                raise ValueError("score_from selects the scored targets of an evaluation; training scores all")
            # the ignored positions drop out of the summed cross-entropy; with every score_from 0 nothing is
            # ignored and the sum is bit for bit the unmasked one
            positions = torch.arange(y.size(-1), device=y.device)
            y = y.masked_fill(positions < score_from.to(y.device)[:, None], IGNORED_TARGET)
        if train and self.techniques is not None:
            x, y = self.techniques.inputs(x, y)
        logits, extra = split_output(self.model(x))
        weights = self.techniques.token_weights(logits, y) if train and self.techniques is not None else None
        if weights is None:
            ce = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1),
                                 reduction="mean" if train else "sum")
        else:  # a technique reweights the training loss per token (never the score: train is False there); the
            # plain cross-entropy stays the reported training loss, the reweighting's difference is a term
            per_token = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none")
            ce = per_token.mean()
            extra["reweighted"] = (weights.reshape(-1) * per_token).mean() - ce
        if train and self.techniques is not None:
            extra.update(self.techniques.loss_terms(self.model, x, y, logits))
        aux = sum(extra.values(), torch.zeros((), device=ce.device)) if train else torch.zeros((), device=ce.device)
        return ce, aux


@dataclass(frozen=True)
class ValidationSet:
    tokens: Tensor          # int32 on CPU (half the memory of int64): usable × seq_len + 1 tokens
    seq_len: int
    target_tokens: int
    target_bytes: int

    @property
    def num_sequences(self) -> int:
        return (self.tokens.numel() - 1) // self.seq_len


def load_validation(files, seq_len: int, cap_tokens: int, tables: ByteTables) -> ValidationSet:
    """The validation tokens (whole split, or the first cap_tokens targets) and their exact byte count."""
    tokens = np.concatenate([np.asarray(read_shard(p)) for p in files]).astype(np.int32)
    limit = tokens.size - 1 if cap_tokens <= 0 else min(cap_tokens, tokens.size - 1)
    usable = (limit // seq_len) * seq_len
    if usable <= 0:
        raise UserError(f"the validation split has {tokens.size} tokens, fewer than one sequence of seq_len "
                        f"{seq_len}; use a smaller seq_len or a larger validation cap")
    tokens = tokens[:usable + 1]
    vocab = tables.base_bytes.size
    if tokens.size and int(tokens.max()) >= vocab:
        bad = int(tokens.max())
        raise UserError(f"the validation shards ({Path(files[0]).parent}) hold token id {bad}, outside the "
                        f"tokenizer's {vocab}-token vocabulary: they were made with another tokenizer; pass the "
                        f"right one (--tokenizer) or rebuild the shards")
    target_bytes = tables.count_bytes(tokens[:-1], tokens[1:])
    return ValidationSet(torch.from_numpy(tokens), seq_len, usable, target_bytes)


@torch.no_grad()
def evaluate(scored: nn.Module, val: ValidationSet, batch_tokens: int, rank: int, world_size: int,
             device: torch.device, autocast_dtype: torch.dtype | None) -> tuple[float, float]:
    """(val_loss in nats, val_bpb) over the validation set; every rank must call it."""
    seqs_per_batch = max(1, batch_tokens // val.seq_len)
    first = val.num_sequences * rank // world_size
    last = val.num_sequences * (rank + 1) // world_size
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    was_training = scored.training
    scored.eval()
    hooks.prepare_eval(scored)
    for start in range(first, last, seqs_per_batch):
        end = min(start + seqs_per_batch, last)
        chunk = val.tokens[start * val.seq_len:end * val.seq_len + 1].to(device, non_blocking=True).long()
        x, y = chunk[:-1].reshape(-1, val.seq_len), chunk[1:].reshape(-1, val.seq_len)
        with autocast(device, autocast_dtype):
            loss, _ = scored(x, y, train=False)
        loss_sum += loss.double()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(loss_sum)
    scored.train(was_training)
    val_loss = loss_sum.item() / val.target_tokens
    return val_loss, val_loss / math.log(2.0) * val.target_tokens / val.target_bytes
