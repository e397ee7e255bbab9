"""Preflight: the checks a plugin must pass before its run may rank, on a small CPU copy of the run's model.

A plugin is a valid model that may still cheat or be wrong in ways a score cannot show: logits that see later
tokens, sequences that see each other through the batch, evaluation that is not a function of its input. The
checks run on a live model: every parameter is given a random value first, because a zero-initialised gate
(the baseline's output projections start at zero) hides a leak at init. Causality is checked in training and
evaluation modes, at the budget's sequence length and at a long length that crosses the chunk, pool and window
boundaries the families use, at positions on both sides of each boundary.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import torch

from harness.metric import split_output

# The copy keeps the run's family and options and shrinks what only sets the size.
SMALL = {"vocab_size": 64, "model_dim": 32, "num_heads": 2, "num_kv_heads": 1, "mlp_mult": 2}
LONG_SEQ_LEN = 192  # three of agents' 64-token chunks, 24 of mps's 8-token scan chunks, past 128
BATCH = 3
TOLERANCE = 1e-5  # relative to the largest logit: a leak moves logits by far more, float noise by far less


@dataclass
class Finding:
    check: str
    problem: str


def small_copy(variant, config):
    """The run's config at test size: the family's options kept, the width shrunk, two layers unless layer
    indices (repeat_layers) name more."""
    fields = {f.name for f in dataclasses.fields(config)}
    changes = {k: v for k, v in SMALL.items() if k in fields}
    if "num_layers" in fields and not getattr(config, "repeat_layers", ()):
        changes["num_layers"] = min(config.num_layers, 2)
    values = {f: getattr(config, f) for f in fields}
    return variant.resolve(None, None, {**values, **changes})


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter random and nonzero: matrices ~ N(0, 1/fan_in), vectors and scalars (gains, gates,
    mixes) around 1 with a random spread, so no branch is switched off by its initial value."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        if not p.is_floating_point():
            continue
        noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
        value = noise / math.sqrt(p.shape[-1]) if p.ndim >= 2 else 1.0 + 0.5 * noise
        p.copy_(value.to(p.dtype))


def logits_of(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return split_output(model(x))[0].float()


BOUNDARIES = (8, 64, 128)  # mps's scan chunks, agents' EMA chunks, the length a leak was once hidden behind


def positions(seq_len: int) -> list[int]:
    """0, both sides of each boundary the families use, the middle and the next-to-last position."""
    out = {0, seq_len // 2, seq_len - 2, *(p for k in BOUNDARIES for p in (k - 1, k))}
    return sorted(p for p in out if 0 <= p < seq_len - 1)


def tokens(vocab: int, batch: int, seq_len: int, seed: int) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(seed))


def causality(model, vocab: int, seq_len: int, mode: str) -> list[str]:
    """Changing the tokens after t leaves the logits at 0..t unchanged, for each probed t."""
    model.train(mode == "train")
    x = tokens(vocab, 1, seq_len, seed=1)
    base = logits_of(model, x)
    scale = max(1.0, base.abs().max().item())
    for t in positions(seq_len):
        y = x.clone()
        y[:, t + 1:] = (y[:, t + 1:] + 1 + tokens(vocab, 1, seq_len - t - 1, seed=2 + t) % (vocab - 1)) % vocab
        diff = (logits_of(model, y)[:, :t + 1] - base[:, :t + 1]).abs().max().item()
        if not diff <= TOLERANCE * scale:  # NaN counts as a change
            return [f"in {mode} mode at length {seq_len}, logits at positions <= {t} change by {diff:.2e} when "
                    f"later tokens change: the model sees the future"]
    return []


def batch_independence(model, vocab: int, seq_len: int, mode: str) -> list[str]:
    """A sequence's logits are the same alone and inside a batch of others."""
    model.train(mode == "train")
    x = tokens(vocab, BATCH, seq_len, seed=3)
    together = logits_of(model, x)
    scale = max(1.0, together.abs().max().item())
    for i in range(BATCH):
        diff = (logits_of(model, x[i:i + 1])[0] - together[i]).abs().max().item()
        if not diff <= 1e-4 * scale:
            return [f"in {mode} mode, sequence {i}'s logits change by {diff:.2e} with the other sequences of its "
                    f"batch: sequences must not see each other"]
    return []


def determinism(model, vocab: int, seq_len: int) -> list[str]:
    """The same input scores the same twice in evaluation."""
    model.eval()
    x = tokens(vocab, 2, seq_len, seed=4)
    diff = (logits_of(model, x) - logits_of(model, x)).abs().max().item()
    return [] if diff == 0 else [f"evaluating the same input twice gives logits {diff:.2e} apart"]


def preflight(variant, config, seq_len: int, seed: int = 0) -> tuple[list[Finding], dict]:
    """Run every check on a small CPU copy of (variant, config) with random parameters. Returns the findings
    (empty: conforms) and what was checked, for the run's record."""
    t0 = time.perf_counter()
    small = small_copy(variant, config)
    torch.manual_seed(seed)
    model = variant.construct(small)
    randomize(model, seed)
    vocab = small.vocab_size
    lengths = sorted({seq_len, LONG_SEQ_LEN})
    findings: list[Finding] = []
    for mode in ("train", "eval"):
        for length in lengths:
            findings += [Finding("causality", p) for p in causality(model, vocab, length, mode)]
        findings += [Finding("batch independence", p) for p in batch_independence(model, vocab, seq_len, mode)]
    findings += [Finding("determinism", p) for p in determinism(model, vocab, seq_len)]
    model.train()
    summary = {"checks": ["causality", "batch independence", "determinism"], "modes": ["train", "eval"],
               "lengths": lengths, "seconds": time.perf_counter() - t0, "passed": not findings}
    return findings, summary
