"""The variant registry: explicit, one-way and loud.

A variant file in variants/ (or any path) calls `register(...)` once. The harness never imports a particular
variant; it loads the file that names the family on demand. Unknown or duplicate names are errors that list
what is valid.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from harness import REPO_ROOT
from harness.config import replace, validate
from harness.errors import UserError

VARIANTS_DIR = REPO_ROOT / "variants"


@dataclass(frozen=True)
class Variant:
    name: str
    config_cls: type
    build: Callable[[Any], nn.Module]
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    doc: str = ""
    source_file: Path | None = None
    space: dict[str, Any] = field(default_factory=dict)  # harness.tune.space dimensions over config fields
    graph_breaks: str = ""  # why the model cannot compile as one graph (empty: it compiles with fullgraph=True)
    data: str = "tokens"  # "bytes": it reads the byte form of the budget's dataset (harness/data/bytes.py)

    def construct(self, config: Any, seconds_limit: float | None = None) -> nn.Module:
        """The model, built as every build must be: from the config and the seed alone, without training, within
        `seconds_limit` (harness.guard)."""
        from harness.guard import building

        with building(self.name, seconds_limit):
            model = self.build(config)
        from harness.model import GPTConfig, ignored_options

        ignored = ignored_options(model, config) if isinstance(config, GPTConfig) else []
        if ignored:
            flag = ignored[0].split()[0]
            default = getattr(GPTConfig(), flag[2:].replace("-", "_"))
            raise UserError(f"{ignored[0]} does not apply to variant {self.name!r}: its own code replaces the shared "
                            f"piece that option changes; leave it at its default (add {flag} "
                            f"{str(default).lower() if isinstance(default, bool) else default} where a preset such as "
                            f"record-stack sets it)")
        return model

    @property
    def source_sha256(self) -> str | None:
        """The content hash of the variant file as it was when it was imported (None: not from a file)."""
        return LOADED_HASHES.get(str(self.source_file)) if self.source_file else None

    def all_presets(self) -> dict[str, dict[str, Any]]:
        """The family's presets and the shared ones every family takes by name (harness.model.SHARED_PRESETS)."""
        from harness.model import SHARED_PRESETS

        return {**SHARED_PRESETS, **self.presets}

    def resolve(self, preset: str | None = None, budget_overrides: dict[str, Any] | None = None,
                flags: dict[str, Any] | None = None, budget_name: str = "budget",
                preset_values: dict[str, Any] | None = None) -> Any:
        """Defaults → the budget's model overrides → a preset → command-line flags, validated at each layer.
        `preset_values`: the preset's values from a preset file instead of the variant's own presets."""
        config = self.config_cls()
        validate(config)
        if budget_overrides:
            config = replace(config, budget_overrides, f"budget {budget_name} [model]")
        if preset:
            presets = self.all_presets()
            if preset_values is None and preset not in presets:
                known = ", ".join(sorted(presets)) or "none"
                raise UserError(f"variant {self.name!r} has no preset {preset!r}; presets: {known}")
            values = presets[preset] if preset_values is None else preset_values
            config = replace(config, values, f"preset {self.name}:{preset}")
        if flags:
            config = replace(config, flags, "command line")
        if hasattr(config, "check"):
            config.check()
        return config


_REGISTRY: dict[str, Variant] = {}
LOADED_HASHES: dict[str, str] = {}  # variant file → sha256 of the bytes that were imported


# Options of run, show, sweep and tune: a config field of the same name would be shadowed by the option (as a
# field `seed` once was by the training seed), so none may be declared. A test keeps this list in step with
# the command line.
RESERVED_FIELD_NAMES = frozenset({
    "variant", "preset", "preset_file", "budget", "seed", "run_id", "results_dir", "data_root", "data_dir",
    "tokenizer", "dataset", "device", "compile", "precision", "max_steps", "quiet", "note", "json", "grid",
    "seeds", "name", "keep_weights", "tensorboard",
    "executor", "parallel", "partition", "account", "qos", "cpus_per_task", "mem_gb", "margin_minutes",
    "max_concurrent", "dry_run", "wait", "trials", "objectives", "search", "only", "pruner", "report_at",
    "storage", "workers", "sampler_seed", "reeval_top", "reeval_seeds", "heartbeat_grace", "time_minutes",
    "help", "spec", "preflight", "no_preflight", "debug", "with_", "with", "search_with",
    "gres", "constraint", "exclude", "nodelist", "sbatch", "setup"})


def register(name: str, config: type, build: Callable[[Any], nn.Module], presets: dict | None = None,
             doc: str = "", space: dict | None = None, graph_breaks: str = "", data: str = "tokens") -> Variant:
    """Called once by each variant file: its family name, config dataclass, builder, named presets, the
    search space `tune` explores (on top of the optimizer's; see harness/tune/space.py), for a model that
    cannot compile as one graph, why not (it then compiles with graph breaks, which the record counts), and
    for a byte-level model data="bytes" (it trains and is scored on the byte form of the budget's dataset)."""
    from harness.tune.space import check

    if data not in ("tokens", "bytes"):
        raise UserError(f"variant {name!r}: data={data!r}; a model reads \"tokens\" or \"bytes\"")
    if not dataclasses.is_dataclass(config):
        raise UserError(f"variant {name!r}: config must be a dataclass")
    clash = sorted({f.name for f in dataclasses.fields(config)} & RESERVED_FIELD_NAMES)
    if clash:
        raise UserError(f"variant {name!r}: config field {clash[0]!r} has the name of a command-line option; "
                        f"rename it (e.g. {clash[0]}_{name})")
    check(dict(space or {}), config, f"variant {name}")
    caller = Path(sys._getframe(1).f_globals.get("__file__", "")).resolve()
    existing = _REGISTRY.get(name)
    if existing is not None and existing.source_file != caller:
        raise UserError(f"variant {name!r} is registered twice: {existing.source_file} and {caller}")
    variant = Variant(name, config, build, dict(presets or {}), doc, caller, dict(space or {}), graph_breaks, data)
    _REGISTRY[name] = variant
    return variant


def known_variant_names() -> list[str]:
    return sorted(p.stem for p in VARIANTS_DIR.glob("*.py") if not p.stem.startswith("_"))


def _load_file(path: Path) -> None:
    module_name = f"variants.{path.stem}" if path.parent == VARIANTS_DIR else f"golf_variant_{path.stem}"
    if module_name in sys.modules:
        return
    from harness import guard, integrity
    from harness.data.datasets import default_data_root

    integrity.freeze()  # the harness as it is before any plugin code runs
    guard.add_plugin_files(path)
    guard.protect(default_data_root())
    LOADED_HASHES[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except UserError:
        del sys.modules[module_name]
        raise
    except Exception as exc:  # the plugin's own code: say where, in one line (--debug is not needed to find it)
        del sys.modules[module_name]
        line = exc.lineno if isinstance(exc, SyntaxError) else next(
            (f.lineno for f in reversed(traceback.extract_tb(exc.__traceback__)) if Path(f.filename) == path), None)
        at = f" (line {line})" if line else ""
        raise UserError(f"variant file {path} failed to load{at}: {type(exc).__name__}: "
                        f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from None
    from harness.artifact import imported_files

    guard.add_plugin_files(*imported_files(path))  # helper modules it imports are its code too


def get_variant(name_or_path: str) -> tuple[Variant, str | None]:
    """A variant by name, `name:preset`, or a path to a plugin file; returns (variant, preset or None)."""
    name, _, preset = name_or_path.partition(":")
    if name.endswith(".py"):
        path = Path(name).resolve()
        if not path.is_file():
            raise UserError(f"variant file {name} does not exist")
        _load_file(path)
        mine = [v for v in _REGISTRY.values() if v.source_file == path]
        if not mine:
            raise UserError(f"variant file {name} does not call harness.registry.register(...)")
        return mine[0], preset or None
    if name not in _REGISTRY:
        path = VARIANTS_DIR / f"{name}.py"
        if not name.isidentifier():
            raise UserError(f"variant {name!r} is neither a variant name (letters, digits, '_') nor a path to a .py "
                            f"file; known variants: {', '.join(known_variant_names())}")
        if not path.is_file():
            raise UserError(f"unknown variant {name!r}; known variants: {', '.join(known_variant_names())} "
                            f"(or give a path to a .py file)")
        _load_file(path)
        if name not in _REGISTRY:
            raise UserError(f"variants/{name}.py does not register a variant named {name!r}")
    return _REGISTRY[name], preset or None

