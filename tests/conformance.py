"""The conformance checks every variant must pass, at tiny sizes on the CPU; used by test_conformance.py and by
the two-process DDP script. Each check returns a list of problems (empty = conforms), so the suite can also
prove that it rejects deliberately broken plugins."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import torch

from harness import artifact, hooks
from harness.conformance import alignment_loss, copy_pairs  # noqa: F401 (used by the tests)
from harness.conformance import train_steps as train  # noqa: F401
from harness.metric import split_output
from harness.registry import get_variant, known_variant_names

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TINY = {"vocab_size": 64, "model_dim": 32, "num_heads": 2, "num_kv_heads": 1, "mlp_mult": 2}
SEQ_LEN = 32
# Causality is checked on sequences that cross every chunked code path: three of agents' 64-token EMA chunks,
# 24 of mps's 8-token scan chunks. The positions sit on both sides of chunk boundaries.
CAUSAL_SEQ_LEN = 192
CAUSAL_POSITIONS = (0, 7, 8, 63, 64, 100, 127, 128, 190)


# Options no preset switches on, checked too: (family, preset, changes).
OPTIONS = [
    ("depth_recurrence", "r34x2", {"per_pass": "scale"}),
    ("depth_recurrence", "r34x2", {"per_pass": "embed"}),
    ("mla", "gqa_latent64", {"latent_norm": True, "rope_dim": 8, "q_latent_dim": 16}),  # GQA form, all options
    ("mla", None, {"q_latent_dim": 0, "latent_norm": False}),  # DeepSeek-V2 form, decoupled RoPE from x
    ("pause_tokens", "p4i64", {"pause_interval": 5}),  # test sequences are short: make the pauses occur
    ("pause_tokens", "p8i32", {"pause_interval": 12, "delay_readout": True}),
    ("basis_sharing", "output_basis_r64", {"group_size": 1}),
    ("basis_sharing", "input_basis_r64", {"group_size": 1, "shared_kinds": ("q", "o", "proj")}),  # shared zero-init C
    ("attention_budget", "swa", {"window": 8, "global_every": 2, "budget_from_embedding": True}),  # band < 32
    ("attention_budget", "span", {"max_span": 16, "span_ramp": 8, "window": 64}),  # spans bite; span + band
    ("memory_slots", None, {"mode": "running", "memory_every": 2}),
    ("memory_slots", "s32", {"chunk_len": 12}),  # several chunks in 32-token tests, the last one partial
    ("resonance", "m8", {"pool": "chunked", "chunk_len": 8}),  # chunk boundaries at the probes 7|8, 63|64, 127|128
    ("moh", None, {"num_heads": 4}),  # at 2 test heads no head is shared: 1 shared + top-2 of 3 routed
    ("mod", "c50", {"route_layers": (0,)}),  # block 0 routed, the next one full: the other interleaving
    ("hourglass", None, {"num_layers": 3, "outer_layers": 1, "shorten_factor": 3, "pool": "linear",
                         "upsample": "linear"}),  # outer layers at test depth; 32 tokens not divisible by 3
    ("token_pooling", None, {"num_layers": 3, "outer_layers": 1}),  # boundaries read a full-resolution layer
    ("feedback", None, {"chunk_len": 8}),  # memory read in 32-token tests; chunk edges at the probes 7|8, 63|64
    ("micro", None, {"balance_weight": 0.01}),  # top-1 specialists with the Switch balancing loss
    ("shared", None, {"num_layers": 4, "share_pattern": "cycle"}),  # MLPs 0,1,0,1: sharing across non-neighbours
    # The shared model options, on the baseline (every family that uses the shared pieces inherits them):
    ("baseline", None, {"mlp_activation": "swiglu", "norm": "layer", "residual_scale": "scalar"}),
    ("baseline", None, {"mlp_activation": "geglu", "qk_norm": False, "rope_fraction": 0.5, "residual_scale": "none"}),
    ("baseline", "mqa", {"mlp_activation": "leaky_relu2", "position": "cope", "cope_positions": 8}),  # clamped
    ("baseline", None, {"mlp_activation": "gelu", "rope_fraction": 0.0}),  # no positions at all (NoPE)
]


def all_configs() -> list[tuple[str, str | None, dict]]:
    """Every family at its defaults and at each of its presets, and the options above. A preset that is the
    family's defaults at test size (nca:steps50 is nca; bitnet:d1024 only widens it, and the tests set the
    width) is the same model in every check: it is tested once, as the defaults."""
    configs = []
    for name in known_variant_names():
        variant, default = tiny(name)
        configs += [(name, None, {})] + [(name, preset, {}) for preset in variant.presets
                                         if tiny(name, preset)[1] != default]
    return configs + [option for option in OPTIONS if option[0] in known_variant_names()]


def config_id(name: str, preset: str | None, changes: dict) -> str:
    return (f"{name}:{preset}" if preset else name) + "".join(f",{k}={v}" for k, v in changes.items())


def tiny(name: str, preset: str | None = None, **changes):
    """(variant, config) at test size: the preset's own settings kept, except the width (and the depth, unless
    the preset names layers)."""
    variant, _ = get_variant(name)
    flags = dict(TINY)
    if "num_layers" not in (variant.presets.get(preset, {}) if preset else {}):
        flags["num_layers"] = 2
    return variant, variant.resolve(preset, None, {**flags, **changes})


# Compile checks build each configuration at the least depth it allows: compile time grows with the unrolled
# graph, and a preset's kind of graph does not change with its depth or step count.
COMPILE_SIZE = {"max_ponder_steps": 2, "loops": 2, "unique_layers": 1}


def compile_size(name: str, preset: str | None = None, **changes):
    """(variant, config) for a compile check: `tiny` at one layer, the fields in COMPILE_SIZE at their small
    values, and a preset's repeated layers moved to the front (r345x2 repeats layers 0, 1, 2 of three)."""
    variant, _ = get_variant(name)
    values = {**(variant.presets.get(preset, {}) if preset else {}), **changes}
    fields = {f.name for f in dataclasses.fields(variant.config_cls)}
    small = {k: v for k, v in COMPILE_SIZE.items() if k in fields and k not in changes}
    repeats = values.get("repeat_layers") or ()
    if repeats:
        small["repeat_layers"] = tuple(range(len(repeats)))
    return variant, variant.resolve(preset, None, {**TINY, "num_layers": max(1, len(repeats)), **small, **changes})


def structure(variant, config) -> tuple:
    """What decides a configuration's code paths: its family, its flags, strings and tuples, and which of its
    numbers are zero (a 0 often switches a part off). Configurations that differ only in nonzero sizes share it."""
    return (variant.name, *((f.name, v if isinstance(v, bool | str | tuple) else v == 0)
                            for f in dataclasses.fields(config) for v in [getattr(config, f.name)]))


def build(variant, config, seed: int = 0):
    torch.manual_seed(seed)
    return variant.build(config)


def logits_of(model, x) -> torch.Tensor:
    with torch.no_grad():
        return split_output(model(x))[0]


def random_tokens(config, batch: int = 4, seq_len: int = SEQ_LEN, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, config.vocab_size, (batch, seq_len), generator=torch.Generator().manual_seed(seed))


def shape_problems(model, config) -> list[str]:
    x = random_tokens(config)
    model.eval()
    logits = logits_of(model, x)
    model.train()
    out = model(x)
    train_logits, extra = split_output(out)
    problems = []
    for mode, lg in (("eval", logits), ("train", train_logits)):
        if tuple(lg.shape) != (*x.shape, config.vocab_size):
            problems.append(f"{mode} logits have shape {tuple(lg.shape)}, expected {(*x.shape, config.vocab_size)}")
        elif not torch.isfinite(lg).all():
            problems.append(f"{mode} logits are not all finite")
    for name, term in extra.items():
        if term.ndim != 0 or not torch.isfinite(term):
            problems.append(f"training-only loss {name!r} is not a finite scalar")
    return problems


def causality_problems(model, config, positions=CAUSAL_POSITIONS, seq_len: int = CAUSAL_SEQ_LEN) -> list[str]:
    """Changing the tokens after t must leave the logits at 0..t unchanged."""
    model.eval()
    x = random_tokens(config, seq_len=seq_len, seed=1)
    base = logits_of(model, x)
    problems = []
    for t in positions:
        later = random_tokens(config, seq_len=seq_len, seed=2 + t)[:, t + 1:]
        y = x.clone()
        y[:, t + 1:] = (y[:, t + 1:] + 1 + later % (config.vocab_size - 1)) % config.vocab_size
        changed = logits_of(model, y)
        diff = (changed[:, :t + 1] - base[:, :t + 1]).abs().max().item()
        if diff > 1e-5:
            problems.append(f"logits at positions <= {t} change by {diff:.2e} when later tokens change")
    model.train()
    return problems


def round_trip_problems(model, variant, config) -> list[str]:
    """The artifact alone rebuilds the model: its logits equal those of the model with dequantized weights."""
    problems = []
    state = hooks.exported_state(model)
    blob = artifact.compress(state)
    restored = artifact.restore(variant.build, config, blob)
    dequantized = copy.deepcopy(model)
    dequantized.load_state_dict(artifact.decompress(blob), strict=False)
    x = random_tokens(config, seed=3)
    for m in (model, restored, dequantized):
        m.eval()
    a, b, full = logits_of(dequantized, x), logits_of(restored, x), logits_of(model, x)
    if (a - b).abs().max().item() > 1e-4:
        problems.append(f"rebuilt-from-artifact logits differ from dequantized ones by {(a - b).abs().max():.2e}: "
                        f"something the model needs is neither stored nor rebuilt from its seed")
    scale = full.abs().max().item() + 1e-6
    if (b - full).abs().max().item() > 0.1 * scale:
        problems.append(f"int8 round trip moves logits by {(b - full).abs().max():.3f} (max |logit| {scale:.3f})")
    stored = artifact.stored_numel(artifact.decompress(blob))
    if stored != artifact.stored_numel(state):
        problems.append(f"artifact holds {stored} numbers, the exported state {artifact.stored_numel(state)}")
    drop = tuple(getattr(model, "training_only", ()))
    unstored = [n for n, _ in model.named_parameters() if n not in state and not (drop and n.startswith(drop))]
    if unstored:
        problems.append(f"parameters missing from the artifact: {unstored[:3]}")
    model.train()
    return problems


def finite(values) -> bool:
    return all(math.isfinite(v) for v in values)
