"""Preflight: every family passes the conformance checks on a live (randomised) model, each deliberately
dishonest plugin in fixtures/cheaters/ is caught by the check named for its trick, `run` refuses it before
anything is recorded, `check` names the failed check, and a run that skips preflight is never ranked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conformance import all_configs, config_id
from test_cli_errors import assert_one_line_error

from conftest import REPO, harness_cli, harness_main, write_budget
from harness import conformance
from harness.budget import load_budget
from harness.data.datasets import resolve_dataset
from harness.registry import get_variant

CHEATERS = REPO / "tests" / "fixtures" / "cheaters"
# plugin file → the check that must catch it, and words its finding must hold
CAUGHT_BY = {
    "zero_gate_leak": ("causality", "sees the future"),
    "noncausal_mask": ("causality", "sees the future"),
    "next_token_leak": ("causality", "sees the future"),
    "sparse_leak": ("causality", "sees the future"),
    "eval_only_leak": ("causality", "in eval mode"),
    "long_sequence_leak": ("causality", "at length 192"),
    "batch_coupling": ("batch independence", "must not see each other"),
    "nondeterministic_eval": ("determinism", "apart"),
    "eval_dropout": ("determinism", "apart"),
    "wrong_shape": ("output shape", "expected (2, 64, 64)"),
    "unregistered_buffer": ("state outside the artifact", "mixer"),
    "two_ahead": ("alignment", "must predict token t+1"),
    "plain_tensor_state": ("artifact round trip", "learnt_bias"),
    "forward_reads_weights": ("artifact round trip", "smuggled_table.txt"),
    "reads_a_table": ("build", "smuggled_table.txt"),
    "reads_validation": ("build", "_val_"),
    "trains_in_build": ("build", "stepped an optimizer"),
    "slow_build": ("build", "build_seconds_limit of 1s"),
    "forward_reads_data": ("data access", "_val_"),  # in the alignment check's training steps
}
# Plugins that rewrite the harness when imported: checked in a subprocess, so this one stays intact.
PATCH_THE_HARNESS = {"patches_the_score": "harness.metric.evaluate was replaced",
                     "disables_causality": "harness.conformance.causality's code or defaults were changed"}
SLOWER_CHECKS = {"alignment", "artifact round trip", "data access"}


def test_every_cheater_in_the_folder_is_tested():
    assert {p.stem for p in CHEATERS.glob("*.py")} == set(CAUGHT_BY) | set(PATCH_THE_HARNESS)


def family_defaults() -> list[tuple]:
    """Every family at its defaults: presets and options pass test_conformance's checks (causality, round trip,
    alignment) at every configuration, and the preflight's checks are the same code for each of them."""
    return [config for config in all_configs() if config[1] is None and not config[2]]


@pytest.mark.parametrize("name,preset,changes", family_defaults(), ids=[config_id(*c) for c in family_defaults()])
def test_every_family_passes_every_check(name, preset, changes):
    variant, _ = get_variant(name)
    budget = load_budget("smoke")
    config = variant.resolve(preset, budget.model, changes)
    findings, summary = conformance.preflight(variant, config, budget.seq_len, full=True,
                                              build_seconds_limit=budget.build_seconds_limit)
    assert not findings, [(f.check, f.problem) for f in findings]
    assert summary["passed"] and summary["lengths"] == [192, 256] and summary["checks"] == list(conformance.FULL)


@pytest.mark.parametrize("cheater", sorted(CAUGHT_BY))
def test_each_cheating_plugin_is_caught_by_its_check(cheater, monkeypatch):
    monkeypatch.setenv("GOLF_SLOW_BUILD_SECONDS", "4")
    resolve_dataset("builtin", log=lambda message: None)  # reads_validation looks for the split under the data root
    variant, _ = get_variant(str(CHEATERS / f"{cheater}.py"))
    budget = load_budget("smoke")
    check, words = CAUGHT_BY[cheater]
    findings, summary = conformance.preflight(variant, variant.resolve(None, budget.model, {}), budget.seq_len,
                                              full=check in SLOWER_CHECKS, build_seconds_limit=1.0)
    assert findings and not summary["passed"]
    assert any(f.check == check and words in f.problem for f in findings), [(f.check, f.problem) for f in findings]


@pytest.mark.parametrize("cheater", sorted(PATCH_THE_HARNESS))
def test_a_plugin_that_rewrites_the_harness_is_caught(cheater):
    done = harness_cli("check", str(CHEATERS / f"{cheater}.py"))
    assert done.returncode == 1, done.stdout + done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("FAIL  harness integrity"))
    assert "the plugin changed the harness in memory" in line and PATCH_THE_HARNESS[cheater] in line
    assert "FAIL  artifact round trip" in done.stdout  # the sealed process saw it too


def test_a_zero_initialised_leak_is_invisible_at_init_which_is_why_preflight_randomises():
    """The old check, on the freshly built model, passes the zero-gated leak: the gate is zero at init."""
    from conformance import causality_problems, tiny

    variant, config = tiny(str(CHEATERS / "zero_gate_leak.py"))
    torch_model = variant.build(config)
    assert causality_problems(torch_model, config) == []
    conformance.randomize(torch_model)
    assert conformance.causality(torch_model, config.vocab_size, 64, "eval")


def test_run_refuses_a_cheater_before_recording_anything(tmp_path):
    budget = write_budget(tmp_path / "b.toml")
    result = harness_main("run", "--variant", str(CHEATERS / "zero_gate_leak.py"), "--budget", str(budget),
                          "--results-dir", str(tmp_path / "r"))
    assert_one_line_error(result, "preflight check 'causality' failed", "python -m harness check")
    assert not (tmp_path / "r").exists()


def test_check_prints_a_line_per_check_and_names_what_failed():
    passed = harness_main("check", "baseline")
    assert passed.returncode == 0, passed.stderr
    assert [line.split()[0] for line in passed.stdout.splitlines()[:-1]] == ["ok"] * len(conformance.FULL)
    assert f"{len(conformance.FULL)}/{len(conformance.FULL)} checks passed" in passed.stdout
    failed = harness_main("check", str(CHEATERS / "batch_coupling.py"))
    assert failed.returncode == 1 and "FAIL  batch independence" in failed.stdout
    assert failed.stderr.strip() == "error: failed: batch independence"


def test_a_run_without_preflight_is_recorded_unverified_and_never_ranked(tmp_path):
    from harness.report import tables

    budget = write_budget(tmp_path / "b.toml")
    results = tmp_path / "r"
    for extra in ([], ["--no-preflight"]):
        done = harness_main("run", "--variant", "baseline", "--budget", str(budget), "--max-steps", "2", "--quiet",
                            "--results-dir", str(results), *extra)
        assert done.returncode == 0, done.stderr
    records = [json.loads(p.read_text()) for p in sorted(Path(results).glob("*/run.json"))]
    by_kind = {bool(r["preflight"].get("skipped")): r for r in records}
    assert by_kind[False]["preflight"]["passed"] and by_kind[False]["preflight"]["seconds"] > 0
    assert {"name": "preflight", "budget": "on", "effective": "off"} in by_kind[True]["overrides"]
    boards = tables.build_leaderboards(tables.load_runs(results))
    rows = [row for board in boards for row in board.rows]
    unverified = [row for row in rows if row["label"].endswith("(unverified)")]
    assert len(unverified) == 1 and not unverified[0]["ranked"]
    assert any(row["ranked"] for row in rows if not row["label"].endswith("(unverified)"))


def test_a_sweep_of_a_cheater_is_refused_before_anything_is_submitted(tmp_path):
    budget = write_budget(tmp_path / "b.toml")
    result = harness_main("sweep", "--variant", str(CHEATERS / "long_sequence_leak.py"), "--budget", str(budget),
                          "--seeds", "2", "--results-dir", str(tmp_path / "r"))
    assert_one_line_error(result, "preflight check 'causality' failed")
    assert not (tmp_path / "r").exists()


def test_code_a_plugin_imports_from_beside_it_is_counted_in_the_artifact():
    done = harness_main("show", str(CHEATERS / "helper_code" / "outside_count.py"), "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    helper = (CHEATERS / "helper_code" / "golf_helper_functions.py").stat().st_size
    plugin = (CHEATERS / "helper_code" / "outside_count.py").stat().st_size
    baseline = json.loads(harness_main("show", "baseline", "--json").stdout)
    assert info["artifact_model_code_bytes"] == baseline["artifact_model_code_bytes"] - (
        REPO / "variants" / "baseline.py").stat().st_size + plugin + helper


def test_a_build_that_reads_a_file_is_refused(tmp_path):
    result = harness_main("show", str(CHEATERS / "reads_a_table.py"))
    assert_one_line_error(result, "build() opened", "smuggled_table.txt", "config and seed alone")
    budget = write_budget(tmp_path / "b.toml")
    run = harness_main("run", "--variant", str(CHEATERS / "reads_a_table.py"), "--budget", str(budget),
                       "--results-dir", str(tmp_path / "r"))
    assert_one_line_error(run, "build() opened")
    assert not (tmp_path / "r").exists()
