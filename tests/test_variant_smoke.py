"""Every family runs the smoke budget end to end — data, training steps, final eval, int8+zlib export, rebuild
from the artifact, round-trip eval and record — in one process, capped at one step and scored on the first
2,048 validation tokens, at its defaults. The presets and options are built, trained, round-tripped, checked
for causality and compiled by the conformance suite, which also reads their evaluation metrics; what this run
adds (the data, the clock, the sealed round trip, the record) is the same code for every preset of a family.
The run skips its own preflight: test_preflight runs every check (more than a run's) on the same configuration.
The full-minute runs on the whole split are in bench/variants.py and docs/VARIANTS.md."""

import dataclasses
import math

import conformance as cf
import pytest

from harness.budget import load_budget
from harness.registry import get_variant, known_variant_names
from harness.train import RunSpec, run

SMOKE = dataclasses.replace(load_budget("smoke"), val_tokens_cap=2048)
CONFIGS = [(name, None) for name in known_variant_names()]


@pytest.mark.parametrize("name,preset", CONFIGS, ids=[cf.config_id(n, p, {}) for n, p in CONFIGS])
def test_runs_the_smoke_budget_end_to_end(name, preset, tmp_path):
    budget = SMOKE
    variant, _ = get_variant(name)
    config = variant.resolve(preset, budget.model, None, budget.name)
    record = run(RunSpec(variant=variant, config=config, budget=budget, preset=preset, results_dir=tmp_path,
                         max_steps=1, quiet=True, command=["test"], preflight=False))
    assert record["status"] == "ok", record.get("error")
    assert record["steps"] == 1 and math.isfinite(record["val_bpb_post_quant"])
    assert record["stored_param_count"] > 0 and record["artifact_total_bytes"] > record["artifact_code_bytes"] > 0
    assert (tmp_path / record["run_id"] / "model.int8.ptz").stat().st_size == record["artifact_model_bytes"]
