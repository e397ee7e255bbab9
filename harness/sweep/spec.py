"""Sweep specs: a TOML file or a command-line grid → the list of runs it stands for.

    name = "example"
    budget = "smoke"
    seeds = [1, 2]                              # or a count: seeds = 3 → 1, 2, 3
    [[runs]]
    variant = "eigenweight"
    presets = ["r64", "r128"]                   # optional; default: the family's defaults
    grid = { matrix_lr = [0.02, 0.04] }         # optional; every combination
    params = { warmdown_steps = 100 }           # optional; the same for every run of this entry
    with = ["", "mtp", "mtp+deep_supervision"]  # optional; training-only techniques, each list item a run set
                                                # (their flags go in grid/params beside the variant's)
    max_steps = 50                              # optional (top level or entry): cap the steps, an override of
                                                # the budget recorded in every run, which then ranks apart
    [slurm]                                     # optional: SLURM options (harness/sweep/slurm.py), each
    partition = "gpu"                           # replaced by the command line's flag where one is given
    setup = ["module load cuda/12.4"]

Every run is resolved exactly as `run` resolves its flags (same validation, same errors), and its id is a pure
function of what it runs — variant, resolved config, budget and seed — so planning twice gives the same ids
and a re-run finds the records of the first.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.checks import check_seed, safe_name, to_safe_name
from harness.config import read_toml
from harness.errors import UserError

ENTRY_KEYS = {"variant", "preset", "presets", "grid", "params", "seeds", "budget", "max_steps", "with"}
TOP_KEYS = {"name", "budget", "seeds", "runs", "description", "max_steps", "slurm"}


@dataclass
class PlannedRun:
    run_id: str
    variant: str
    preset: str | None
    params: dict[str, Any]          # flags given to the variant (the grid point and the fixed params)
    swept: dict[str, Any]           # what varies across the sweep: preset and grid values
    seed: int
    budget: str                     # budget name or path, as the spec gave it
    max_steps: int | None = None    # a step cap below the budget's (an override, recorded in the run)
    with_: str = ""                 # training-only techniques, as --with takes them ("" none)
    config_hash: str = ""           # RunSpec.config_hash(): what makes two runs the same run (see finished_elsewhere)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Sweep:
    name: str
    runs: list[PlannedRun] = field(default_factory=list)
    source: str = ""
    slurm: dict[str, Any] = field(default_factory=dict)  # the file's [slurm] table, checked (SlurmOptions fields)


def as_flag_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def seeds_of(value: Any, where: str) -> list[int]:
    if isinstance(value, bool) or value is None:
        raise UserError(f"{where}: seeds must be a count or a list of integers, got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise UserError(f"{where}: seeds = {value} runs nothing; give a count of at least 1 or a list")
        return list(range(1, value + 1))
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        for seed in value:
            check_seed(seed, f"{where}: seed")
        return list(dict.fromkeys(value))
    raise UserError(f"{where}: seeds must be a count or a non-empty list of integers, got {value!r}")


def max_steps_of(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{where}: max_steps must be a whole number of steps, at least 1; got {value!r}")
    return value


def expand(name: str, entries: list[dict], default_budget: str | None, default_seeds: list[int],
           source: str, default_max_steps: int | None = None) -> Sweep:
    """Entries → PlannedRuns, each resolved and validated like `run` would; duplicates collapse to one."""
    from harness import techniques
    from harness.budget import load_budget
    from harness.config import parse_value
    from harness.registry import get_variant
    from harness.train import RunSpec

    safe_name(name, "sweep name")
    sweep = Sweep(name=name, source=source)
    budgets: dict[str, Any] = {}
    seen: set[str] = set()
    checked: set[str] = set()
    for n, entry in enumerate(entries, 1):
        where = f"{source} run entry {n}"
        unknown = sorted(set(entry) - ENTRY_KEYS)
        if unknown:
            raise UserError(f"{where}: unknown key {unknown[0]!r}; entries take {', '.join(sorted(ENTRY_KEYS))}")
        if "variant" not in entry:
            raise UserError(f"{where}: needs variant = \"NAME\"")
        variant, preset_in_name = get_variant(str(entry["variant"]))
        presets = entry.get("presets", [entry.get("preset", preset_in_name)])
        if not isinstance(presets, list) or not presets:
            raise UserError(f"{where}: presets must be a non-empty list of preset names")
        grid = entry.get("grid", {})
        fixed = entry.get("params", {})
        if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
            raise UserError(f"{where}: grid must map parameter names to non-empty lists of values")
        if not isinstance(fixed, dict):
            raise UserError(f"{where}: params must map parameter names to values")
        budget_name = str(entry.get("budget", default_budget or ""))
        if not budget_name:
            raise UserError(f"{where}: no budget; set budget = \"NAME\" at the top of the file or in the entry")
        if budget_name.endswith(".toml"):  # a budget file: jobs may start elsewhere, so keep an absolute path
            budget_name = str(Path(budget_name).resolve())
        budget = budgets.setdefault(budget_name, load_budget(budget_name))
        seeds = seeds_of(entry["seeds"], where) if "seeds" in entry else default_seeds
        max_steps = max_steps_of(entry.get("max_steps", default_max_steps), where)
        withs = entry.get("with", [""])
        withs = [withs] if isinstance(withs, str) else withs
        if not isinstance(withs, list) or not withs or not all(isinstance(w, str) for w in withs):
            raise UserError(f"{where}: with must be a list of technique combinations such as [\"\", \"mtp\"]")
        combos = {w: techniques.parse_with(w) for w in withs}
        owned = {f.name for specs in combos.values() for spec in specs for f in dataclasses.fields(spec.config_cls)}
        fields = {f.name for f in dataclasses.fields(variant.config_cls)}
        for key in [*grid, *fixed]:
            if key not in fields | owned:
                raise UserError(f"{where}: {variant.name} has no parameter {key!r} "
                                f"(python -m harness list shows its parameters and the techniques')")
        names = list(grid)
        for preset, with_text in itertools.product(presets, withs):
            specs = combos[with_text]
            mine = {f.name: spec.config_cls for spec in specs for f in dataclasses.fields(spec.config_cls)}
            for point in itertools.product(*(grid[k] for k in names)):
                raw = {**fixed, **dict(zip(names, point))}
                flags = {k: parse_value(variant.config_cls, k, as_flag_text(v)) for k, v in raw.items() if k in fields}
                tech_flags = {k: parse_value(mine[k], k, as_flag_text(v)) for k, v in raw.items() if k in mine}
                config = variant.resolve(preset, budget.model, flags, budget.name)
                applied = techniques.resolve(specs, tech_flags)
                preflight_once(variant, config, budget, checked, applied)
                swept = {**({"preset": preset} if len(presets) > 1 else {}),
                         **({"with": with_text} if len(withs) > 1 else {}),
                         **{k: {**flags, **tech_flags}[k] for k in names if k in flags or k in tech_flags}}
                for seed in seeds:
                    spec = RunSpec(variant=variant, config=config, budget=budget, preset=preset, seed=seed,
                                   max_steps=max_steps, techniques=applied)
                    label, config_hash = f"{spec.label()}{'-' + preset if preset else ''}", spec.config_hash()
                    run_id = to_safe_name(f"{label}-{budget.name}-s{seed}-{config_hash[:10]}")
                    if run_id in seen:
                        continue
                    seen.add(run_id)
                    sweep.runs.append(PlannedRun(run_id=run_id, variant=variant_ref(variant), preset=preset,
                                                 params={**flags, **tech_flags}, swept=swept, seed=seed,
                                                 budget=budget_name, max_steps=max_steps,
                                                 with_=",".join(s.name for s in specs),
                                                 config_hash=config_hash))
    return sweep


def preflight_once(variant, config, budget, checked: set[str], applied=()) -> None:
    """The conformance checks each distinct model of the sweep must pass, before anything is submitted: a plugin
    that fails them refuses the whole sweep, naming the check, instead of failing run after run."""
    from harness.config import as_dict, stable_hash
    from harness.train import RunSpec, preflight_checks

    key = stable_hash({"variant": variant.name, "config": as_dict(config), "seq_len": budget.seq_len})
    if key not in checked:
        preflight_checks(RunSpec(variant=variant, config=config, budget=budget))
        checked.add(key)
    if applied:  # the techniques' proof, once per configuration and combination, before anything is submitted
        proof_key = stable_hash({"config": key, "techniques": [[s.name, as_dict(c)] for s, c in applied]})
        if proof_key not in checked:
            from harness.techniques.proof import prove

            prove(variant, config, list(applied))
            checked.add(proof_key)


def variant_ref(variant) -> str:
    """How a job finds the variant again: its registered name, or the path of a plugin file outside variants/."""
    from harness.registry import known_variant_names

    return variant.name if variant.name in known_variant_names() else str(Path(variant.source_file).resolve())


def load_spec_file(path: Path, seeds_override: int | None = None, name: str | None = None,
                   max_steps: int | None = None) -> Sweep:
    data = read_toml(path, "sweep file")
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown key {unknown[0]!r}; a sweep file takes {', '.join(sorted(TOP_KEYS))}")
    runs = data.get("runs")
    if not isinstance(runs, list) or not runs:
        raise UserError(f"{path}: no [[runs]] entries")
    seeds = seeds_of(seeds_override if seeds_override is not None else data.get("seeds", 1), str(path))
    max_steps = max_steps if max_steps is not None else max_steps_of(data.get("max_steps"), str(path))
    from harness.sweep.slurm import from_table

    slurm = from_table(data.get("slurm", {}), str(path))
    sweep = expand(name or str(data.get("name", path.stem)), runs, data.get("budget"), seeds, str(path), max_steps)
    sweep.slurm = slurm
    return sweep


def parse_grid(words: list[str]) -> dict[str, list[str]]:
    """`rank=64,128,256` (repeatable) → {"rank": ["64", "128", "256"]}."""
    grid: dict[str, list[str]] = {}
    for word in words:
        key, eq, values = word.partition("=")
        if not eq or not key or not values:
            raise UserError(f"--grid {word!r} should look like name=value1,value2")
        grid[key.strip().replace("-", "_")] = [v.strip() for v in values.split(",") if v.strip()]
    return grid
