"""Every family runs the smoke budget end to end — data, training steps, final eval, int8+zlib export, rebuild
from the artifact, round-trip eval and record — in one process, capped at one step and scored on the first
2,048 validation tokens: at its defaults and at every preset with code paths of its own (presets that differ
from another only in sizes, such as eigenweight's ranks and widths, share one run: they are built, trained
and round-tripped at every size by the conformance suite). The full-minute runs on the whole split are in
bench/variants.py and docs/VARIANTS.md."""

import dataclasses
import math

import conformance as cf
import pytest

from harness.budget import load_budget
from harness.registry import get_variant
from harness.train import RunSpec, run

SMOKE = dataclasses.replace(load_budget("smoke"), val_tokens_cap=2048)
STRUCTURES: dict[tuple, tuple[str, str | None]] = {}
for _name, _preset, _changes in cf.all_configs():
    if not _changes:
        _variant, _ = get_variant(_name)
        STRUCTURES.setdefault(cf.structure(_variant, _variant.resolve(_preset, SMOKE.model, None, SMOKE.name)),
                              (_name, _preset))
CONFIGS = list(STRUCTURES.values())


@pytest.mark.parametrize("name,preset", CONFIGS, ids=[cf.config_id(n, p, {}) for n, p in CONFIGS])
def test_runs_the_smoke_budget_end_to_end(name, preset, tmp_path):
    budget = SMOKE
    variant, _ = get_variant(name)
    config = variant.resolve(preset, budget.model, None, budget.name)
    record = run(RunSpec(variant=variant, config=config, budget=budget, preset=preset, results_dir=tmp_path,
                         max_steps=1, quiet=True, command=["test"]))
    assert record["status"] == "ok", record.get("error")
    assert record["steps"] == 1 and math.isfinite(record["val_bpb_post_quant"])
    assert record["stored_param_count"] > 0 and record["artifact_total_bytes"] > record["artifact_code_bytes"] > 0
    assert (tmp_path / record["run_id"] / "model.int8.ptz").stat().st_size == record["artifact_model_bytes"]
