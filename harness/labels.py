"""A run's configuration label: the one short name every view of a run uses (results, status, sweep, tune, watch,
the report's tables and plots).

    eigenweight rank=64                       a family, the parameters that differ from what it would run with
    baseline:record-stack +mtp                a preset, techniques
    mla kv_rank=32 export=gptq-zstd seq_len=2048

"What it would run with" is the family's defaults with the budget's [model] sizes and the preset applied, so a
label names what the command line chose, not what the budget or the preset already imply. Values a tune trial
sampled are floats of 16 digits; they are shown to 4 significant digits.
"""

from __future__ import annotations

import functools
import json
from typing import Any

_MISSING = object()


def format_value(value: Any) -> str:
    """A config value for a label or a table: floats to 4 significant digits, lists comma-joined."""
    if isinstance(value, list | tuple):
        return ",".join(map(format_value, value))
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@functools.lru_cache(maxsize=512)
def _reference(variant: str, preset: str | None, budget_model: str, budget_name: str) -> dict | None:
    """The config `variant` resolves to with nothing on the command line, as record values (None: a plugin that
    cannot be loaded here, or a preset it no longer has)."""
    try:
        from harness.config import as_dict
        from harness.registry import get_variant

        family, _ = get_variant(variant)
        config = family.resolve(preset, json.loads(budget_model) or None, None, budget_name)
        return json.loads(json.dumps(as_dict(config), default=str))
    except Exception:  # noqa: BLE001 - a record from another machine still gets a label, with every value shown
        try:
            from harness.config import as_dict
            from harness.registry import get_variant

            return json.loads(json.dumps(as_dict(get_variant(variant)[0].config_cls()), default=str))
        except Exception:  # noqa: BLE001
            return None


def differing(record: dict) -> dict[str, Any]:
    """The record's config values that differ from what its family, budget and preset give by themselves."""
    config = record.get("config")
    if not isinstance(config, dict):
        return {}
    budget = record.get("budget") if isinstance(record.get("budget"), dict) else {}
    model = budget.get("model") if isinstance(budget.get("model"), dict) else {}
    preset = record.get("preset") if isinstance(record.get("preset"), str) else None
    reference = _reference(str(record.get("variant")), preset, json.dumps(model, sort_keys=True, default=str),
                           str(record.get("budget_name") or "budget"))
    if reference is None:
        return dict(config)
    return {k: v for k, v in config.items() if reference.get(k, _MISSING) != v}


def techniques(record: dict) -> list[str]:
    return [str(t.get("name")) for t in record.get("techniques") or [] if isinstance(t, dict) and t.get("name")]


def config_label(record: dict, max_params: int | None = None) -> str:
    """'eigenweight:small rank=64 +mtp': family, preset, the parameters that differ, techniques. `max_params`
    keeps the first few differing parameters and says how many more there are."""
    preset = record.get("preset")
    head = f"{record.get('variant')}{':' + str(preset) if preset else ''}"
    params = [f"{k}={format_value(v)}" for k, v in differing(record).items()]
    if max_params is not None and len(params) > max_params:
        params = [*params[:max_params], f"(+{len(params) - max_params} more)"]
    return " ".join([head, *params, *(f"+{t}" for t in techniques(record))])
