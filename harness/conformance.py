"""Preflight: the checks a plugin must pass before its run may rank, on a small CPU copy of the run's model.

A plugin is a valid model that may still cheat or be wrong in ways a score cannot show: logits that see later
tokens, sequences that see each other through the batch, evaluation that is not a function of its input. The
checks run on a live model: every parameter is given a random value first, because a zero-initialised gate
(the baseline's output projections start at zero) hides a leak at init. Causality is checked in training and
evaluation modes, at the budget's sequence length and at a long length that crosses the chunk, pool and window
boundaries the families use, at positions on both sides of each boundary and at positions drawn afresh each
time (a leak at positions a plugin chose cannot know which will be looked at).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness import artifact, guard, integrity
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
RANDOM_PROBES = 16  # positions drawn afresh each time: a leak at positions a plugin chose cannot count on them
PROBES_PER_FORWARD = 8


def positions(seq_len: int, probe_seed: int = 0) -> list[int]:
    """0, both sides of each boundary the families use, the middle, the next-to-last position, and
    RANDOM_PROBES positions drawn from `probe_seed`."""
    out = {0, seq_len // 2, seq_len - 2, *(p for k in BOUNDARIES for p in (k - 1, k))}
    if seq_len > 1:
        g = torch.Generator().manual_seed(probe_seed)
        out.update(torch.randint(0, seq_len - 1, (RANDOM_PROBES,), generator=g).tolist())
    return sorted(p for p in out if 0 <= p < seq_len - 1)


def tokens(vocab: int, batch: int, seq_len: int, seed: int) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(seed))


def causality(model, vocab: int, seq_len: int, mode: str, probe_seed: int = 0,
              per_forward: int = PROBES_PER_FORWARD) -> list[str]:
    """Changing the tokens after t leaves the logits at 0..t unchanged, for each probed t (`per_forward` probes
    per forward pass, one sequence each: 1 for a model whose sequences see each other through the batch)."""
    model.train(mode == "train")
    x = tokens(vocab, 1, seq_len, seed=1)
    base = logits_of(model, x)[0]
    scale = max(1.0, base.abs().max().item())
    probes = positions(seq_len, probe_seed)
    for start in range(0, len(probes), per_forward):
        chunk = probes[start:start + per_forward]
        rows = x.repeat(len(chunk), 1)
        for row, t in enumerate(chunk):
            later = tokens(vocab, 1, seq_len - t - 1, seed=2 + t)[0]
            rows[row, t + 1:] = (rows[row, t + 1:] + 1 + later % (vocab - 1)) % vocab
        changed = logits_of(model, rows)
        for row, t in enumerate(chunk):
            diff = (changed[row, :t + 1] - base[:t + 1]).abs().max().item()
            if not diff <= TOLERANCE * scale:  # NaN counts as a change
                return [f"in {mode} mode at length {seq_len}, logits at positions <= {t} change by {diff:.2e} "
                        f"when later tokens change: the model sees the future"]
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


def output_shape(model, vocab: int, seq_len: int) -> list[str]:
    """Logits of shape (batch, seq_len, vocab), finite, in both modes; training-only terms finite scalars."""
    x = tokens(vocab, 2, seq_len, seed=5)
    problems = []
    for mode in ("train", "eval"):
        model.train(mode == "train")
        with torch.no_grad():
            logits, extra = split_output(model(x))
        if tuple(logits.shape) != (*x.shape, vocab):
            problems.append(f"{mode} logits have shape {tuple(logits.shape)}, expected {(*x.shape, vocab)}")
        elif not torch.isfinite(logits).all():
            problems.append(f"{mode} logits are not all finite")
        problems += [f"training-only loss {name!r} is not a finite scalar" for name, term in extra.items()
                     if mode == "train" and not (torch.is_tensor(term) and term.ndim == 0 and torch.isfinite(term))]
    return problems


def state_outside_artifact(variant, config, seed: int = 0) -> list[str]:
    """Two builds under different seeds hold the same tensors outside their state dict: whatever differs is
    neither stored in the artifact nor regenerated from the config, so a rebuilt model would not have it."""
    models = []
    for s in (seed + 11, seed + 12):
        torch.manual_seed(s)
        models.append(variant.construct(config))
    names = artifact.differing_unstored(*models)
    if not names:
        return []
    return [f"tensors {', '.join(names[:3])} are not in the exported state dict and differ between builds: "
            f"register them as parameters or persistent buffers, or generate them from a stored seed "
            f"(harness.hooks.seeded_generator)"]


PREFLIGHT = ("build", "output shape", "causality", "batch independence", "determinism", "state outside the artifact",
             "data access", "harness integrity")
FULL = PREFLIGHT[:-2] + ("alignment", "artifact round trip", "data access", "harness integrity")


def _run(check: str, fn, *args) -> list[Finding]:
    """The check's findings; a check the model crashes fails, saying how (a refused file read by name)."""
    try:
        return [Finding(check, p) for p in fn(*args)]
    except guard.BuildRefused as exc:
        return [Finding(check, str(exc))]
    except Exception as exc:
        path = guard.refused_path(exc)
        if path:
            return [Finding("data access", f"during the {check} check the model opened {path}")]
        text = str(exc).strip().splitlines()
        return [Finding(check, f"the model raised {type(exc).__name__}" + (f": {text[0]}" if text else ""))]


def preflight(variant, config, seq_len: int, seed: int = 0, full: bool = False,
              build_seconds_limit: float | None = None) -> tuple[list[Finding], dict]:
    """Run the checks on a small CPU copy of (variant, config) with random parameters. Returns the findings
    (empty: conforms) and what was checked, for the run's record. `full` adds the slower checks `check` runs:
    the copy task (logits at t predict token t+1) and the sealed artifact round trip after it."""
    t0 = time.perf_counter()
    small = small_copy(variant, config)
    vocab = small.vocab_size
    lengths = sorted({seq_len, LONG_SEQ_LEN})
    probe_seed = int.from_bytes(os.urandom(4), "little")  # which positions are probed: new every time
    built: list = []

    def build() -> list[str]:
        torch.manual_seed(seed)
        built.append(variant.construct(small, build_seconds_limit))
        return []

    findings = _run("build", build)
    if built:
        model = built[0]
        randomize(model, seed)
        findings += _run("output shape", output_shape, model, vocab, min(seq_len, 64))
    if built and not findings:  # the other checks need a model with logits of the right shape
        for mode in ("train", "eval"):
            coupled = _run("batch independence", batch_independence, model, vocab, seq_len, mode)
            per_forward = 1 if coupled else PROBES_PER_FORWARD  # then probes must not share a batch
            for length in lengths:
                findings += _run("causality", causality, model, vocab, length, mode, probe_seed, per_forward)
            findings += coupled
        findings += _run("determinism", determinism, model, vocab, seq_len)
        findings += _run("state outside the artifact", state_outside_artifact, variant, small, seed)
        model.train()
        if full:
            torch.manual_seed(seed)
            fresh = variant.construct(small, build_seconds_limit)
            findings += _run("alignment", alignment, fresh, small)
            findings += _run("artifact round trip", sealed_round_trip, variant, small, fresh)
    changed = integrity.verify()
    if changed:
        findings.append(Finding("harness integrity", f"the plugin changed the harness in memory: "
                                                     f"{'; '.join(changed[:4])}"))
    checks = list(FULL if full else PREFLIGHT)
    summary = {"checks": checks, "modes": ["train", "eval"], "lengths": lengths, "probe_seed": probe_seed,
               "seconds": time.perf_counter() - t0, "passed": not findings}
    return findings, summary


# ------------------------------------------------------------------ the slower checks of `check`

COPY_LEN = 32


def train_steps(model, config, batches) -> list[float]:
    """One optimizer step per (x, y) batch, through the trainer's own accumulate(); the losses."""
    from harness.metric import ScoredModel
    from harness.optim import build_optimizers
    from harness.train import accumulate

    scored = ScoredModel(model)
    optimizers, _ = build_optimizers(model, config, fused=False)
    losses = []
    for x, y in batches:
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        losses.append(accumulate(scored, model, [(x, y)], 1, 1, torch.device("cpu"), None).item())
        for opt in optimizers:
            opt.step()
    return losses


def copy_pairs(config, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random tokens, each even position's token repeated at the next position: from position 2k the next
    token is certain (a copy), from odd positions it is uniformly random."""
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(0, config.vocab_size, (batch, COPY_LEN // 2 + 1), generator=g).repeat_interleave(2, dim=1)
    return seq[:, :COPY_LEN], seq[:, 1:COPY_LEN + 1]


def alignment_loss(model, config, steps: int = 60, stop_below: float | None = None) -> float:
    """Mean loss (nats) on the predictable positions of held-out copy pairs after training on copy pairs: near 0
    if logits at t predict token t+1, about ln(vocab) if they are shifted by one position. With `stop_below`,
    training ends as soon as a check (every 10 steps) is under it, so a model that learns fast is not trained on."""
    x, y = copy_pairs(config, 32, seed=10_000)

    def held_out() -> float:
        model.eval()
        logits = logits_of(model, x)
        model.train()
        return F.cross_entropy(logits[:, 0::2].reshape(-1, config.vocab_size), y[:, 0::2].reshape(-1)).item()

    for start in range(0, steps, 10):
        train_steps(model, config, (copy_pairs(config, 16, seed) for seed in range(start, min(start + 10, steps))))
        if stop_below is not None and held_out() < stop_below:
            break
    return held_out()


def alignment(model, config) -> list[str]:
    """The copy task is learnt: logits at t predict token t+1 (not t, not t+2)."""
    target = 0.25 * math.log(config.vocab_size)
    loss = alignment_loss(model, config, stop_below=target)
    if loss < target:
        return []
    return [f"after training on a copy task the predictable tokens still cost {loss:.2f} nats (ln vocab = "
            f"{math.log(config.vocab_size):.2f}): logits at position t must predict token t+1"]


def sealed_round_trip(variant, config, model) -> list[str]:
    """The trained model exported, then rebuilt from the artifact alone in a sealed process: the same logits."""
    from harness import hooks, sealed

    blob = artifact.compress(hooks.exported_state(model))
    restored = artifact.restore(variant.construct, config, blob)
    artifact.copy_tensors(model, restored)
    probe = tokens(config.vocab_size, 2, COPY_LEN * 2, seed=6)
    try:
        result = sealed.round_trip(variant, config, blob, artifact.model_source_files(model, variant.source_file),
                                   counted="submission", device=torch.device("cpu"), precision="fp32",
                                   probe_tokens=probe, probe_logits=sealed.probe_logits(model, probe))
    except sealed.SealedFailure as exc:
        return [str(exc)]
    problem = sealed.probe_mismatch(result)
    if problem is None:
        return []
    hidden = artifact.differing_unstored(model, restored)
    return [problem + (f"; tensors outside it that differ: {', '.join(hidden[:3])}" if hidden else "")]
