"""Evaluation schemes: how the validation targets are scored, each of them exactly once, so that val_bpb keeps
its meaning (the same targets and bytes as the standard scheme) while the context or the model differs.

- `standard`: `harness.metric.evaluate`, non-overlapping windows of seq_len (the challenge's baseline).
- `sliding`: windows of seq_len advancing by a stride; the first window scores all its targets, every later one
  only the targets that no window scored yet (its last `stride`, or fewer at the tail), so each of them is
  predicted from at least seq_len − stride tokens of context. A plan of (window start, first scored offset) is a
  pure function, `sliding_plan`; the loss is the harness's, through `ScoredModel(..., score_from=...)`. The
  challenge's record 2026-03-19_SlidingWindowEval scored this way with stride 64 (−0.032 bpb, same weights).
- `ttt`: legal score-first test-time training. The targets are taken in order in chunks; each chunk is scored
  first (by the sliding plan restricted to the chunk, no gradient, eval mode), then, unless it is the last, the
  model trains on that already-scored chunk with SGD before the next chunk is scored. No target is ever
  predicted by weights that have seen it. The defaults are the record 2026-03-23_LeakyReLU_LegalTTT_ParallelMuon's
  (the record-stack preset's): chunks of 32,768 targets, 3 epochs, SGD lr 0.002 (2026-04-06_SP8192_QK5_LegalTTT
  used 0.005) with momentum 0.9 and a cosine decay of the lr across chunks, gradient norm clipped to 1.0, 32
  sequences a step, every parameter trained (both records freeze no block) and scoring by sliding windows of
  stride 64. The training loss is the harness's training cross-entropy without techniques (ScoredModel with
  train=True), plus the variant's own training-only terms, as in training.

Every rank scores a contiguous share of the windows (of a chunk) and the sums are all-reduced, as `evaluate`
does. In test-time training every rank also computes the gradient of its share of each step's sequences; the
shares are weighted by their size and summed across ranks, so each step follows the mean gradient over the
step's sequences and every rank keeps identical weights.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from harness import hooks
from harness.config import field_type, param, type_name
from harness.errors import UserError
from harness.metric import ValidationSet, autocast, evaluate
from harness.model import EVAL_SCHEMES  # the names, declared with the config

TTT_GRAD_CLIP_NORM = 1.0  # both legal-TTT records clip the test-time gradient to norm 1.0


@dataclass(frozen=True)
class EvalScheme:
    name: str = param("standard", "how the validation targets are scored", choices=EVAL_SCHEMES)
    stride: int = param(64, "targets a sliding window advances by (seq_len: the standard windows)", low=1)
    ttt_chunk_tokens: int = param(32768, "test-time training: targets scored, then trained on, at a time "
                                         "(a multiple of seq_len)", low=1)
    ttt_epochs: int = param(3, "test-time training: passes over each scored chunk", low=0)
    ttt_lr: float = param(0.002, "test-time training: SGD learning rate (cosine-decayed across chunks)", low=0.0)
    ttt_momentum: float = param(0.9, "test-time training: SGD momentum", low=0.0, high=0.9999)
    ttt_batch_seqs: int = param(32, "test-time training: sequences in one SGD step, over all ranks", low=1)
    time_limit_seconds: float = param(math.inf, "seconds after which test-time training stops and the rest is "
                                                "only scored", low=0.0)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value, kind, flag = getattr(self, f.name), field_type(type(self), f.name), scheme_flag(f.name)
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
                object.__setattr__(self, f.name, value)
            unbounded = f.name == "time_limit_seconds" and value == math.inf  # no limit: the default
            if (isinstance(value, bool) or not isinstance(value, kind)
                    or (kind is float and not math.isfinite(value) and not unbounded)):
                raise UserError(f"{flag} expects {type_name(kind)}, got {value!r}")
            meta = f.metadata
            if meta["choices"] is not None and value not in meta["choices"]:
                raise UserError(f"{flag}={value} is not allowed; choose one of: {', '.join(meta['choices'])}")
            if meta["low"] is not None and value < meta["low"]:
                raise UserError(f"{flag}={value} is below its minimum {meta['low']}; {meta['help']}")
            if meta["high"] is not None and value > meta["high"]:
                raise UserError(f"{flag}={value} is above its maximum {meta['high']}; {meta['help']}")

    def check(self, seq_len: int) -> None:
        """The ranges that depend on the validation's seq_len."""
        if self.name != "standard" and self.stride > seq_len:
            raise UserError(f"--eval-stride={self.stride} is larger than seq_len {seq_len}: windows would skip "
                            f"targets; use a stride from 1 to {seq_len}")
        if self.name == "ttt" and self.ttt_chunk_tokens % seq_len:
            raise UserError(f"--ttt-chunk-tokens={self.ttt_chunk_tokens} is not a multiple of seq_len {seq_len}; "
                            f"use e.g. {max(1, round(self.ttt_chunk_tokens / seq_len)) * seq_len}")


def scheme_flag(field_name: str) -> str:
    """The command-line flag of an EvalScheme field: --eval, --eval-stride, --ttt-lr, ..."""
    if field_name == "name":
        return "--eval"
    prefix = "--" if field_name.startswith("ttt_") else "--eval-"
    return prefix + field_name.replace("_", "-")


def sliding_plan(num_targets: int, seq_len: int, stride: int, first: int = 0,
                 stop: int | None = None) -> list[tuple[int, int]]:
    """The windows that score targets first..stop-1 (all of them by default) exactly once, in order: (window
    start, first scored offset). A window at start w reads tokens w..w+seq_len-1 and predicts targets
    w..w+seq_len-1; it scores those from w + offset to its end. Every window is full length and inside the
    targets; the first of the whole set scores all of its own, each later one the next `stride` targets (fewer
    at the tail or at `stop`) with the rest of the window as context. `first` must be 0 or at least seq_len."""
    stop = num_targets if stop is None else stop
    if not (1 <= stride <= seq_len and seq_len <= num_targets and 0 <= first <= stop <= num_targets
            and (first == 0 or first >= seq_len)):
        raise ValueError(f"no sliding plan for targets {first}..{stop} of {num_targets}, seq_len {seq_len}, "
                         f"stride {stride}")
    plan, scored_until = [], first
    if first == 0 and stop > 0:
        plan.append((0, 0))
        scored_until = seq_len
    while scored_until < stop:
        end = min(scored_until + stride, stop)
        plan.append((end - seq_len, scored_until - (end - seq_len)))
        scored_until = end
    if scored_until > stop:
        raise ValueError(f"the first window scores {seq_len} targets, past stop {stop}")
    return plan


def rank_share(count: int, rank: int, world_size: int) -> tuple[int, int]:
    """A contiguous [start, end) share of `count` items for a rank (the split `evaluate` uses)."""
    return count * rank // world_size, count * (rank + 1) // world_size


def _score_windows(scored: nn.Module, val: ValidationSet, windows: list[tuple[int, int]], batch_tokens: int,
                   device: torch.device, autocast_dtype: torch.dtype | None) -> tuple[Tensor, int]:
    """The summed loss (float64) and the count of the targets that `windows` score, a batch of windows a forward."""
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    count = 0
    per_batch = max(1, batch_tokens // val.seq_len)
    offsets = torch.arange(val.seq_len + 1)
    for i in range(0, len(windows), per_batch):
        batch = windows[i:i + per_batch]
        starts = torch.tensor([w for w, _ in batch])
        tokens = val.tokens[starts[:, None] + offsets].to(device, non_blocking=True).long()
        score_from = torch.tensor([s for _, s in batch], device=device)
        with autocast(device, autocast_dtype):
            loss, _ = scored(tokens[:, :-1], tokens[:, 1:], train=False, score_from=score_from)
        loss_sum += loss.double()
        count += sum(val.seq_len - s for _, s in batch)
    return loss_sum, count


def _all_reduce_sum(*values: Tensor) -> list[Tensor]:
    if dist.is_available() and dist.is_initialized():
        stacked = torch.stack(values)
        dist.all_reduce(stacked)
        return list(stacked.unbind())
    return list(values)


def _result(loss_sum: Tensor, count: Tensor, val: ValidationSet, info: dict[str, Any]
            ) -> tuple[float, float, dict[str, Any]]:
    loss_sum, count = _all_reduce_sum(loss_sum, count)
    val_loss = loss_sum.item() / val.target_tokens  # as `evaluate`: one rank alone (no process group) gives its part
    info["targets_scored"] = round(count.item())
    return val_loss, val_loss / math.log(2.0) * val.target_tokens / val.target_bytes, info


@torch.no_grad()
def evaluate_sliding(scored: nn.Module, val: ValidationSet, stride: int, batch_tokens: int, rank: int,
                     world_size: int, device: torch.device, autocast_dtype: torch.dtype | None
                     ) -> tuple[float, float, dict[str, Any]]:
    """(val_loss, val_bpb, info) with sliding windows; every rank must call it. Stride seq_len gives exactly
    `evaluate`'s windows, batches and sums."""
    plan = sliding_plan(val.target_tokens, val.seq_len, stride)
    first, last = rank_share(len(plan), rank, world_size)
    was_training = scored.training
    scored.eval()
    hooks.prepare_eval(scored)
    loss_sum, count = _score_windows(scored, val, plan[first:last], batch_tokens, device, autocast_dtype)
    scored.train(was_training)
    count = torch.tensor(float(count), device=device, dtype=torch.float64)
    return _result(loss_sum, count, val, {"scheme": "sliding", "stride": stride, "windows": len(plan)})


def _out_of_time(started: float, limit_seconds: float, device: torch.device) -> bool:
    """Whether the time limit has passed, agreed by every rank (rank 0's clock decides), so that all ranks take
    the same number of steps and their gradient all-reduces pair up."""
    if limit_seconds == math.inf:
        return False
    over = torch.tensor(float(time.perf_counter() - started >= limit_seconds), device=device)
    if dist.is_available() and dist.is_initialized():
        dist.broadcast(over, src=0)
    return bool(over.item())


def _ttt_step(scored: nn.Module, val: ValidationSet, seqs: tuple[int, int], params: list[nn.Parameter],
              optimizer: torch.optim.Optimizer, batch_tokens: int, rank: int, world_size: int,
              device: torch.device, autocast_dtype: torch.dtype | None) -> None:
    """One SGD step on sequences seqs[0]..seqs[1]-1 of the validation (all ranks): this rank's share in
    micro-batches of batch_tokens, each weighted by its part of the step so the summed gradients are the mean."""
    optimizer.zero_grad(set_to_none=True)
    total = seqs[1] - seqs[0]
    first, last = (seqs[0] + i for i in rank_share(total, rank, world_size))
    per_batch = max(1, batch_tokens // val.seq_len)
    for start in range(first, last, per_batch):
        end = min(start + per_batch, last)
        chunk = val.tokens[start * val.seq_len:end * val.seq_len + 1].to(device, non_blocking=True).long()
        with autocast(device, autocast_dtype):
            loss, aux = scored(chunk[:-1].reshape(-1, val.seq_len), chunk[1:].reshape(-1, val.seq_len), train=True)
        ((loss + aux) * ((end - start) / total)).backward()
    if dist.is_available() and dist.is_initialized():
        for p in params:  # a rank whose share was empty, or a parameter it did not reach, adds zeros
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
    torch.nn.utils.clip_grad_norm_(params, TTT_GRAD_CLIP_NORM)
    optimizer.step()


def evaluate_ttt(scored: nn.Module, val: ValidationSet, scheme: EvalScheme, batch_tokens: int, rank: int,
                 world_size: int, device: torch.device, autocast_dtype: torch.dtype | None
                 ) -> tuple[float, float, dict[str, Any]]:
    """(val_loss, val_bpb, info) by score-first test-time training; every rank must call it. It trains the model
    in place: pass a copy to keep the weights."""
    started = time.perf_counter()
    seq_len, usable = val.seq_len, val.target_tokens
    chunks = [(lo, min(lo + scheme.ttt_chunk_tokens, usable)) for lo in range(0, usable, scheme.ttt_chunk_tokens)]
    params = [p for p in scored.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=scheme.ttt_lr, momentum=scheme.ttt_momentum)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    count, windows, steps, stopped_early = 0, 0, 0, False
    was_training = scored.training
    for k, (lo, hi) in enumerate(chunks):
        # SCORE the chunk with the weights trained on chunks 0..k-1 only
        plan = sliding_plan(usable, seq_len, scheme.stride, lo, hi)
        first, last = rank_share(len(plan), rank, world_size)
        scored.eval()
        with torch.no_grad():
            hooks.prepare_eval(scored)
            chunk_loss, chunk_count = _score_windows(scored, val, plan[first:last], batch_tokens, device,
                                                     autocast_dtype)
        loss_sum += chunk_loss
        count += chunk_count
        windows += len(plan)
        # TRAIN on it, now that it is scored; the last chunk has nothing left to help
        if k == len(chunks) - 1 or scheme.ttt_epochs == 0 or stopped_early:
            continue
        lr = scheme.ttt_lr * 0.5 * (1.0 + math.cos(math.pi * k / max(len(chunks) - 1, 1)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        scored.train()
        for _ in range(scheme.ttt_epochs):
            for step_lo in range(lo // seq_len, hi // seq_len, scheme.ttt_batch_seqs):
                if _out_of_time(started, scheme.time_limit_seconds, device):
                    stopped_early = True
                    break
                step = (step_lo, min(step_lo + scheme.ttt_batch_seqs, hi // seq_len))
                _ttt_step(scored, val, step, params, optimizer, batch_tokens, rank, world_size, device,
                          autocast_dtype)
                steps += 1
            if stopped_early:
                break
    optimizer.zero_grad(set_to_none=True)
    scored.train(was_training)
    info = {"scheme": "ttt", "stride": scheme.stride, "windows": windows, "chunks": len(chunks),
            "ttt_steps": steps, "ttt_stopped_early": stopped_early, "ttt_seconds": time.perf_counter() - started}
    return _result(loss_sum, torch.tensor(float(count), device=device, dtype=torch.float64), val, info)


def evaluate_scheme(scored: nn.Module, val: ValidationSet, scheme: EvalScheme, batch_tokens: int, rank: int,
                    world_size: int, device: torch.device, autocast_dtype: torch.dtype | None
                    ) -> tuple[float, float, dict[str, Any]]:
    """(val_loss in nats, val_bpb, info) under `scheme`; every rank must call it. `scored` is a ScoredModel
    without techniques; `ttt` trains it in place."""
    scheme.check(val.seq_len)
    if scheme.name == "standard":
        val_loss, val_bpb = evaluate(scored, val, batch_tokens, rank, world_size, device, autocast_dtype)
        first, last = rank_share(val.num_sequences, rank, world_size)  # the sequences `evaluate` gave this rank
        count = _all_reduce_sum(torch.tensor(float((last - first) * val.seq_len), device=device))[0]
        return val_loss, val_bpb, {"scheme": "standard", "windows": val.num_sequences,
                                   "targets_scored": round(count.item())}
    if scheme.name == "sliding":
        return evaluate_sliding(scored, val, scheme.stride, batch_tokens, rank, world_size, device, autocast_dtype)
    return evaluate_ttt(scored, val, scheme, batch_tokens, rank, world_size, device, autocast_dtype)
