"""The terminal views of runs (`results`, `status`, `watch`) read as a person reads them: one line per run that
never wraps, configurations told apart by their labels, live progress of running runs, and JSON/CSV that keep
every value whole. Every record here is written by the test, as the trainer writes them."""

from __future__ import annotations

import csv
import io
import json
import time

import pytest

from conftest import harness_main
from harness.budget import load_budget
from harness.config import as_dict
from harness.registry import get_variant
from harness.results import write_json_atomic

LONG = {"num_layers": 3, "model_dim": 96, "num_heads": 3, "num_kv_heads": 1, "mlp_mult": 3, "matrix_lr": 0.031,
        "scalar_lr": 0.033, "tied_embed_lr": 0.041}


def config_of(variant: str, **flags) -> dict:
    budget = load_budget("smoke")
    family, _ = get_variant(variant)
    return json.loads(json.dumps(as_dict(family.resolve(None, budget.model, flags, budget.name)), default=str))


def write_run(results, run_id: str, variant: str = "baseline", flags: dict | None = None, **fields) -> dict:
    budget = load_budget("smoke")
    record = {"schema_version": 2, "run_id": run_id, "status": "ok", "variant": variant, "seed": 1,
              "budget_name": "smoke", "budget": budget.to_dict(), "config": config_of(variant, **(flags or {})),
              "started_at": "2026-01-01T00:00:00Z", "environment": {"device_type": "cpu", "device_name": "test"},
              "dataset": "builtin", "dataset_hash": "d" * 64, "tokenizer": "sp1024", "tokenizer_hash": "t" * 64,
              "overrides": [], "calibration": {"before": {"matmul_gflops": 100.0}, "after": {"matmul_gflops": 100.0}},
              "steps": 200, "train_seconds": 60.0, "tokens_per_second": 13600.0, "artifact_total_bytes": 1_234_567,
              "artifact_cap_bytes": 16_000_000, **fields}
    (results / run_id).mkdir(parents=True)
    write_json_atomic(results / run_id / "run.json", record)
    return record


def now_stamp(ago: float = 0) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - ago))


LIVE = {"step": 120, "max_steps": 500, "seconds": 30.0, "time_left_seconds": 30.0, "train_loss": 3.2109,
        "val_bpb": 2.61, "val_step": 100, "tokens_per_second": 12345.0}
RUNNING = "20260101-000000-eigenweight-smoke-s1-aaaa1111-0001"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    results = tmp_path_factory.mktemp("views") / "results"
    write_run(results, "20260101-000000-baseline-smoke-s1-bbbb0001-0001", val_bpb_post_quant=2.50)
    write_run(results, "20260101-000000-baseline-smoke-s2-bbbb0002-0002", seed=2, val_bpb_post_quant=2.52)
    write_run(results, "20260101-000000-eigenweight-smoke-s1-eeee0032-0003", "eigenweight", {"rank": 32},
              val_bpb_post_quant=2.45, artifact_total_bytes=15_200_000)
    write_run(results, "20260101-000000-eigenweight-smoke-s1-eeee0064-0004", "eigenweight", {"rank": 64},
              val_bpb_post_quant=2.40)
    write_run(results, RUNNING, "eigenweight", {"rank": 16}, status="running", steps=None, train_seconds=None,
              tokens_per_second=None, artifact_total_bytes=None, live={**LIVE, "updated_at": now_stamp()})
    write_run(results, "20260101-000000-baseline-smoke-s3-ffff0001-0006", seed=3, status="failed",
              error="RuntimeError: node lost\nTraceback ...", artifact_total_bytes=None)
    write_run(results, "20260101-000000-baseline-smoke-s4-dddd0001-0007", "baseline", {"matrix_lr": 0.5},
              status="diverged", diverged_step=42, artifact_total_bytes=None)
    write_run(results, "20260101-000000-baseline-smoke-s5-cccc0001-0008", "baseline", {"model_dim": 512},
              status="over_cap", val_bpb_post_quant=2.30, artifact_total_bytes=17_000_000)
    write_run(results, "20260101-000000-baseline-smoke-s6-slow0001-0009", seed=6, val_bpb_post_quant=2.55,
              calibration={"before": {"matmul_gflops": 50.0}, "after": {"matmul_gflops": 50.0}})
    write_run(results, "20260101-000000-baseline-smoke-s7-over0001-0010", seed=7, val_bpb_post_quant=2.60,
              overrides=[{"name": "max_steps", "budget": 20000, "effective": 20}])
    write_run(results, "20260101-000000-baseline-smoke-s1-long0001-0011-with-a-very-long-folder-name", "baseline",
              LONG, val_bpb_post_quant=2.48,
              techniques=[{"name": "mtp"}, {"name": "deep_supervision"}, {"name": "weight_average"}])
    return results


def rows_of(out: str) -> list[str]:
    return [line for line in out.splitlines()[1:] if not line.startswith("~")]


@pytest.mark.parametrize("width", [80, 200])
def test_results_fit_the_terminal_one_line_per_run(results, width):
    done = harness_main("results", "--results-dir", str(results), env={"COLUMNS": str(width)})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.rstrip("\n").splitlines()
    assert all(len(line) <= width for line in lines), [len(line) for line in lines]
    assert len(rows_of(done.stdout)) == 11 and "\x1b" not in done.stdout  # one line per run; no colour in a pipe
    header = lines[0].split()
    assert {"label", "status", "val_bpb", "Δ", "flags"} <= set(header), header
    if width == 200:
        assert {"run", "bytes", "tok/s", "steps"} <= set(header), header
    rank32 = [line for line in rows_of(done.stdout) if "eigenweight rank=32" in line]
    rank64 = [line for line in rows_of(done.stdout) if "eigenweight rank=64" in line]
    assert len(rank32) == 1 and len(rank64) == 1 and rank32 != rank64, done.stdout
    assert "+0.0900" not in rank64[0] and "-0.1100" in rank64[0]  # Δ vs the mean of the two plain baselines
    assert "-0.0600" in rank32[0] and ("15.2M" in rank32[0] or width == 80)
    first = rows_of(done.stdout)
    assert "rank=64" in first[1] and "over cap" in first[0]  # best first (the over-cap run scored lowest)
    assert "RuntimeError: node lost" in done.stdout or "RuntimeError" in done.stdout
    running = next(line for line in first if "running" in line)
    assert "~2.6100" in running and (width == 80 or "120/500" in running)
    slow = next(line for line in first if "contended" in line)
    assert "2.5500" in slow
    overridden = next(line for line in first if "overridden" in line)
    assert "2.6000  +0.0000" in overridden  # compared only with the baseline under the same --max-steps: itself
    assert "diverged at step 42" in done.stdout or width == 80
    assert {"failed", "diverged"} == {next(w for w in ("failed", "diverged") if w in line) for line in first[-2:]}


def test_json_and_csv_keep_every_value_whole(results):
    done = harness_main("results", "--results-dir", str(results), "--json", env={"COLUMNS": "60"})
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    records = {p.parent.name: json.loads(p.read_text()) for p in results.glob("*/run.json")}
    assert {r["run_id"] for r in rows} == set(records)
    for row in rows:
        record = records[row["run_id"]]
        assert row["val_bpb"] == record.get("val_bpb_post_quant") or row["val_bpb_live"]
        assert row["artifact_bytes"] == record.get("artifact_total_bytes")
    long = next(r for r in rows if r["run_id"].endswith("long-folder-name"))
    assert long["label"].endswith("+mtp +deep_supervision +weight_average") and "matrix_lr=0.031" in long["label"]
    running = next(r for r in rows if r["status"] == "running")
    assert running["val_bpb"] == 2.61 and running["val_bpb_live"] and running["steps"] == 120
    failed = next(r for r in rows if r["status"] == "failed")
    assert "RuntimeError: node lost" in failed["flags"]

    done = harness_main("results", "--results-dir", str(results), "--csv", "--columns", "run,label,val_bpb,flags")
    assert done.returncode == 0, done.stderr
    table = list(csv.DictReader(io.StringIO(done.stdout)))
    assert list(table[0]) == ["run_id", "label", "val_bpb", "val_bpb_live", "val_step", "flags"]
    assert [r["run_id"] for r in table] == [r["run_id"] for r in rows]
    assert [r["label"] for r in table] == [r["label"] for r in rows]
    assert [float(r["val_bpb"]) if r["val_bpb"] else None for r in table] == [r["val_bpb"] for r in rows]


def test_columns_and_sort_choose_what_is_shown(results):
    done = harness_main("results", "--results-dir", str(results), "--columns", "label,seed", "--sort=-seed")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["label", "seed"] and lines[1].rstrip().endswith("7")


@pytest.mark.parametrize("flag,value,said", [("--columns", "label,bogus", "--columns 'bogus' is not a column"),
                                             ("--sort=-bogus", None, "--sort '-bogus' is not a column")])
def test_unknown_column_names_are_one_line_errors(results, flag, value, said):
    done = harness_main("results", "--results-dir", str(results), flag, *([value] if value else []))
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert said in done.stderr and "val_bpb" in done.stderr and "flags" in done.stderr
    assert done.stdout == ""


def test_status_of_a_running_run_shows_its_step_and_latest_score(results):
    done = harness_main("status", RUNNING, "--results-dir", str(results))
    assert done.returncode == 0, done.stderr
    assert "eigenweight rank=16" in done.stdout and "120/500" in done.stdout
    assert "2.6100 at step 100" in done.stdout and "3.2109" in done.stdout and "may be gone" not in done.stdout


def test_a_running_record_nobody_refreshes_is_said_to_be_stale(tmp_path):
    write_run(tmp_path, "stale", status="running", live={**LIVE, "updated_at": now_stamp(ago=600)})
    done = harness_main("status", "stale", "--results-dir", str(tmp_path))
    assert done.returncode == 0 and "may be gone" in done.stdout, done.stdout
    gone = harness_main("status", "nothing-here", "--results-dir", str(tmp_path))
    assert gone.returncode == 2 and gone.stderr.count("\n") == 1 and str(tmp_path / "nothing-here") in gone.stderr


def test_status_of_a_sweep_shows_each_runs_label_and_progress(results, tmp_path):
    plan = {"variant": "eigenweight", "preset": None, "swept": {}, "seed": 1, "budget": "smoke", "max_steps": None,
            "with_": ""}
    state = {"name": "ranks", "results_dir": str(results), "submissions": [
        {"run_id": RUNNING, "executor": "local", "job_id": None}],
        "runs": [{**plan, "run_id": "20260101-000000-eigenweight-smoke-s1-eeee0032-0003", "params": {"rank": 32}},
                 {**plan, "run_id": RUNNING, "params": {"rank": 16}},
                 {**plan, "run_id": "not-run-yet", "params": {"rank": 8}}]}
    (results / "sweeps").mkdir(exist_ok=True)
    write_json_atomic(results / "sweeps" / "ranks.json", state)
    try:
        done = harness_main("status", "ranks", "--results-dir", str(results))
    finally:
        (results / "sweeps" / "ranks.json").unlink()
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "3 runs" in lines[0]
    assert any("done" in ln and "eigenweight rank=32" in ln and "2.4500" in ln for ln in lines), lines
    assert any("running" in ln and "eigenweight rank=16" in ln and "step 120/500" in ln and "2.6100" in ln
               for ln in lines), lines
    assert any("missing" in ln and "eigenweight rank=8 " in ln and ln.endswith("not-run-yet") for ln in lines), lines


def test_watch_once_draws_a_bar_per_running_run(results):
    done = harness_main("watch", "--once", "--results-dir", str(results), env={"COLUMNS": "100"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and all(len(ln) <= 100 for ln in lines), lines  # the title, one running run
    assert "eigenweight rank=16" in lines[1] and "[" in lines[1] and "#" in lines[1] and "120/500" in lines[1]
    assert "val_bpb 2.6100" in lines[1] and "loss 3.211" in lines[1] and "\x1b" not in done.stdout


def test_watch_ends_with_the_final_table_once_its_runs_have_ended(results):
    run_id = "20260101-000000-eigenweight-smoke-s1-eeee0064-0004"
    done = harness_main("watch", run_id, "--interval", "0.01", "--results-dir", str(results),
                        env={"COLUMNS": "120"})
    assert done.returncode == 0, done.stderr
    assert "ok" in done.stdout and "eigenweight rank=64" in done.stdout and "val_bpb" in done.stdout
    bad = harness_main("watch", "nosuch", "--results-dir", str(results))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "nosuch" in bad.stderr


def test_colour_only_on_a_terminal():
    from harness.views import render_table

    row = {"run_id": "r", "label": "baseline", "status": "ok", "val_bpb": 2.5, "val_bpb_live": False,
           "delta_baseline": None, "flags": []}
    assert "\x1b[32m" in "\n".join(render_table([row], ["label", "status", "val_bpb"], 80, color=True))
    assert "\x1b" not in "\n".join(render_table([row], ["label", "status", "val_bpb"], 80, color=False))


def test_a_planned_run_is_labelled_as_its_record_will_be():
    from harness.views import planned_label

    plan = {"variant": "eigenweight", "preset": None, "params": {"rank": 64, "num_layers": 4}, "budget": "smoke",
            "with_": "mtp"}
    assert planned_label(plan) == "eigenweight rank=64 +mtp"  # num_layers=4 is what the smoke budget gives
