"""Search spaces: which config fields `tune` varies, over what ranges, and when (conditionals).

A variant declares `space={"rank": Int(16, 512, log=True), ...}` in its `register(...)` call; every variant
also gets the optimizer's learning rates and momentum (OPTIMIZER_SPACE). Names are config fields and values
are checked against each field's type and declared range, so a space can never propose what `run` would
reject. The command line narrows a range (`--search rank=32..256`), replaces choices (`--search
latent_norm=true`), restricts the space (`--only rank,matrix_lr`) or fixes a parameter (`--rank 128`).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from harness.config import field_type, parse_value
from harness.errors import UserError


@dataclass(frozen=True)
class Dim:
    """One searched parameter. `when={"mode": ("mps",)}`: sampled only while `mode` is one of those values
    (an earlier dimension or a fixed parameter); otherwise the field keeps its configured value."""
    when: dict[str, tuple] = field(default_factory=dict, kw_only=True)

    def describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class Float(Dim):
    low: float
    high: float
    log: bool = False

    def describe(self) -> str:
        return f"{self.low:g}..{self.high:g}" + (" (log)" if self.log else "")


@dataclass(frozen=True)
class Int(Dim):
    low: int
    high: int
    log: bool = False

    def describe(self) -> str:
        return f"{self.low}..{self.high}" + (" (log)" if self.log else "")


@dataclass(frozen=True)
class Choice(Dim):
    values: tuple

    def __init__(self, *values: Any, when: dict[str, tuple] | None = None):
        object.__setattr__(self, "values", tuple(values))
        object.__setattr__(self, "when", dict(when or {}))

    def describe(self) -> str:
        return "{" + ", ".join(map(str, self.values)) + "}"


# The challenge's optimizer knobs, for every variant: ranges around train_gpt.py's defaults (0.04/0.04/0.05,
# momentum 0.95), log-scaled where the effect is multiplicative.
OPTIMIZER_SPACE: dict[str, Dim] = {
    "matrix_lr": Float(0.01, 0.12, log=True),
    "scalar_lr": Float(0.01, 0.12, log=True),
    "tied_embed_lr": Float(0.01, 0.2, log=True),
    "muon_momentum": Float(0.85, 0.98),
}

# The records' trainer levers and the export scheme, searched when asked: `--search muon_weight_decay` takes the
# range below (ranges around the records' values: Muon/Adam WD 0.04, MIN_LR 0.1, LATE_QAT_THRESHOLD 0.15),
# `--search muon_weight_decay=0.02..0.06` a range of its own. Not in every study: each is a choice of recipe.
TRAINER_SPACE: dict[str, Dim] = {
    "muon_weight_decay": Float(0.0, 0.1),
    "adam_weight_decay": Float(0.0, 0.1),
    "min_lr": Float(0.0, 0.2),
    "late_qat": Float(0.0, 0.3),
    "muon_momentum_warmup_start": Float(0.8, 0.95),
    "export": Choice("int8-zlib", "int6-zstd", "gptq-zstd", "mixed-zstd"),
}


def check(space: dict[str, Dim], config_cls: type, source: str) -> None:
    """Every dimension names a field of the config, has the field's type and stays inside its declared range."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    seen: list[str] = []
    for name, dim in space.items():
        where = f"{source}: search space entry {name!r}"
        if name not in fields:
            raise UserError(f"{where} is not a parameter of {config_cls.__name__}; known: {', '.join(sorted(fields))}")
        kind, meta = field_type(config_cls, name), fields[name].metadata
        values = dim.values if isinstance(dim, Choice) else (dim.low, dim.high)
        if isinstance(dim, Float) and kind is not float or isinstance(dim, Int) and kind is not int:
            raise UserError(f"{where}: a {type(dim).__name__} range on a {getattr(kind, '__name__', kind)} field; "
                            f"use {'Int' if kind is int else 'Float' if kind is float else 'Choice'}")
        if isinstance(dim, Float | Int):
            if not dim.low < dim.high:
                raise UserError(f"{where}: the range {dim.describe()} is empty; give LOW..HIGH with LOW < HIGH")
            if dim.log and dim.low <= 0:
                raise UserError(f"{where}: a log-scaled range must start above 0, not at {dim.low}")
        elif not dim.values:
            raise UserError(f"{where}: no choices")
        for value in values:
            flag = "--" + name.replace("_", "-")
            if meta.get("choices") is not None and value not in meta["choices"]:
                raise UserError(f"{where}: {value!r} is not allowed for {flag}; choose from {meta['choices']}")
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if meta.get("low") is not None and value < meta["low"] or meta.get("high") is not None and (
                    value > meta["high"]):
                raise UserError(f"{where}: {value} is outside {flag}'s allowed range "
                                f"{meta.get('low')}..{meta.get('high')}")
        for other in dim.when:
            if other not in fields:
                raise UserError(f"{where}: its condition names {other!r}, which is not a parameter")
            if other in space and other not in seen:
                raise UserError(f"{where}: its condition on {other!r} must come after {other!r} in the space")
        seen.append(name)


def parse_search(config_cls: type, text: str) -> tuple[str, Dim]:
    """`NAME=LOW..HIGH`, `NAME=LOW..HIGH:log` or `NAME=A,B,C` (choices) for the field NAME; a bare `NAME` of
    TRAINER_SPACE takes its range there."""
    name, eq, spec = text.partition("=")
    name = name.strip().lstrip("-").replace("-", "_")
    if not eq and name in TRAINER_SPACE and name in {f.name for f in dataclasses.fields(config_cls)}:
        return name, TRAINER_SPACE[name]
    if not eq or not spec:
        raise UserError(f"--search {text!r}: write NAME=LOW..HIGH, NAME=LOW..HIGH:log or NAME=A,B,C (a bare name "
                        f"for one of {', '.join(TRAINER_SPACE)})")
    if name not in {f.name for f in dataclasses.fields(config_cls)}:
        raise UserError(f"--search {text!r}: {name!r} is not a parameter of {config_cls.__name__}")
    kind = field_type(config_cls, name)
    if ".." in spec:
        if kind not in (int, float):
            raise UserError(f"--search {text!r}: a range needs a number field; give choices A,B,C instead")
        bounds, _, scale = spec.partition(":")
        if scale not in ("", "log"):
            raise UserError(f"--search {text!r}: the only scale is ':log', not ':{scale}'")
        low, _, high = bounds.partition("..")
        lo, hi = parse_value(config_cls, name, low.strip()), parse_value(config_cls, name, high.strip())
        return name, (Int if kind is int else Float)(lo, hi, log=scale == "log")
    if typing.get_origin(kind) is tuple:
        raise UserError(f"--search {text!r}: list parameters cannot be searched")
    return name, Choice(*(parse_value(config_cls, name, v.strip()) for v in spec.split(",")))


def toggle_name(technique: str) -> str:
    """The dimension that turns a technique on or off in a trial: with_mtp ∈ {False, True}."""
    return f"with_{technique}"


def technique_space(fixed_specs, toggled_specs) -> dict[str, Dim]:
    """The techniques' declared spaces: those every trial uses as they are; for each toggled one, a with_NAME
    switch first and its dimensions sampled only while it is on."""
    space: dict[str, Dim] = {}
    for spec in fixed_specs:
        space.update(spec.space)
    for spec in toggled_specs:
        on = {toggle_name(spec.name): (True,)}
        space[toggle_name(spec.name)] = Choice(False, True)
        space.update({n: with_condition(d, {**d.when, **on}) for n, d in spec.space.items()})
    return space


def resolve_space(declared: dict[str, Dim], config_cls: type, searches: list[str], only: list[str] | None,
                  fixed: dict[str, Any], techniques: tuple = ((), ())) -> dict[str, Dim]:
    """The optimizer space + the variant's + the techniques' (fixed ones, toggled ones), narrowed by --search,
    restricted by --only, minus fixed flags."""
    fixed_specs, toggled_specs = techniques
    owners = {f.name: (spec, spec in toggled_specs) for spec in (*fixed_specs, *toggled_specs)
              for f in dataclasses.fields(spec.config_cls)}
    space = {**OPTIMIZER_SPACE, **declared, **technique_space(fixed_specs, toggled_specs)}
    for text in searches:
        key = text.partition("=")[0].strip().replace("-", "_")
        if key in owners:  # a technique's field: parsed against its config, sampled only while it is on
            spec, toggled = owners[key]
            name, dim = parse_search(spec.config_cls, text)
            old = space.get(name)
            when = old.when if old is not None else ({toggle_name(spec.name): (True,)} if toggled else {})
            space[name] = with_condition(dim, when)
            continue
        name, dim = parse_search(config_cls, text)
        if name in fixed:
            flag = "--" + name.replace("_", "-")
            raise UserError(f"--search {text!r} searches {flag}, which is also fixed ({flag} {fixed[name]}); "
                            f"drop one of the two")
        old = space.get(name)
        space[name] = dim if old is None else with_condition(dim, old.when)  # narrowing keeps the condition
    if only is not None:
        unknown = [n for n in only if n not in space]
        if unknown:
            raise UserError(f"--only {unknown[0]!r} is not in the search space; the space has: "
                            f"{', '.join(space)} (add it with --search {unknown[0]}=...)")
        space = {n: d for n, d in space.items() if n in only}
    space = {n: d for n, d in space.items() if n not in fixed}
    check({n: d for n, d in space.items() if n not in owners and not n.startswith("with_")}, config_cls, "tune")
    if not space:
        raise UserError("the search space is empty: every parameter is fixed; drop a flag or add --search NAME=...")
    return space


def with_condition(dim: Dim, when: dict[str, tuple]) -> Dim:
    return Choice(*dim.values, when=when) if isinstance(dim, Choice) else dataclasses.replace(dim, when=when)


def active(dim: Dim, chosen: dict[str, Any], base: Any) -> bool:
    """Whether a conditional dimension applies, given the values sampled so far and the base config."""
    return all((chosen[k] if k in chosen else getattr(base, k)) in allowed for k, allowed in dim.when.items())


def suggest(trial, space: dict[str, Dim], base: Any) -> dict[str, Any]:
    """Sample the space with an Optuna trial (define-by-run, so conditionals are natural)."""
    chosen: dict[str, Any] = {}
    for name, dim in space.items():
        if not active(dim, chosen, base):
            continue
        if isinstance(dim, Float):
            chosen[name] = trial.suggest_float(name, dim.low, dim.high, log=dim.log)
        elif isinstance(dim, Int):
            chosen[name] = trial.suggest_int(name, dim.low, dim.high, log=dim.log)
        else:
            chosen[name] = trial.suggest_categorical(name, list(dim.values))
    return chosen


def to_json(space: dict[str, Dim]) -> dict[str, dict]:
    return {name: {"kind": type(dim).__name__, **{k: (list(v) if isinstance(v, tuple) else v)
                                                   for k, v in dataclasses.asdict(dim).items()},
                   "when": {k: list(v) for k, v in dim.when.items()}} for name, dim in space.items()}


def from_json(data: dict[str, dict]) -> dict[str, Dim]:
    out: dict[str, Dim] = {}
    for name, d in data.items():
        when = {k: tuple(v) for k, v in d.get("when", {}).items()}
        if d["kind"] == "Choice":
            out[name] = Choice(*d["values"], when=when)
        else:
            out[name] = {"Float": Float, "Int": Int}[d["kind"]](d["low"], d["high"], d["log"], when=when)
    return out


def describe(space: dict[str, Dim]) -> list[str]:
    return [f"{name} {dim.describe()}" + (" when " + ", ".join(f"{k} in {list(v)}" for k, v in dim.when.items())
                                         if dim.when else "") for name, dim in space.items()]

