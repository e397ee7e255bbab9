"""A run shows itself while it trains: run.json's "live" fields, curve.jsonl as it grows, TensorBoard scalars."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, every_step, harness_cli, harness_main, write_budget
from harness.live import LiveRecord
from harness.results import read_record, record_problem

CURVE_KEYS = {"step", "seconds", "tokens", "train_loss", "lr", "lr_scale", "grad_norm", "tokens_per_second"}
LIVE_KEYS = {"step", "max_steps", "seconds", "time_left_seconds", "train_loss", "val_bpb", "val_step",
             "tokens_per_second", "updated_at"}


def poll(predicate, what: str, proc: subprocess.Popen, polls: int = 6000):
    """`predicate()` until it holds, every 20 ms; the run ending first fails with what it printed."""
    for _ in range(polls):
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (exit {proc.returncode}) before {what}:\n{out}\n{err}")
        time.sleep(0.02)
    pytest.fail(f"no {what} after {polls} polls")


def curve_lines(run_dir) -> list[dict]:
    """curve.jsonl as it is now: every line whole (a refresh appends whole lines and flushes them)."""
    path = run_dir / "curve.jsonl"
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.splitlines()]


def test_a_training_run_shows_its_progress_and_ends_with_every_step_once(tmp_path):
    """The run is held on its clock (5 s, validating every second), not on a step count, so it is still
    training when polled on a fast machine as on a slow one."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    budget = write_budget(tmp_path / "live.toml", train_wallclock_seconds=5, val_every_seconds=1,
                          log_every_seconds=1, warmup_steps=0)
    results, boards = tmp_path / "results", tmp_path / "tb"
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", "--variant", "baseline", "--budget", str(budget),
                             "--quiet", "--no-preflight", "--run-id", "live", "--tensorboard", str(boards)], cwd=REPO,
                            env={**os.environ, "HARNESS_RESULTS_DIR": str(results), "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = results / "live"
    try:
        def live_record():
            record = read_record(run_dir, warn=False)  # None while it does not exist yet
            if record is None:
                return None
            assert record_problem(record) is None
            live = record.get("live")
            if record["status"] == "running" and live and live["step"] > 0 and live["val_bpb"] is not None:
                return record
            assert record["status"] == "running", "the run ended before it was seen training"
            return None

        record = poll(live_record, "a live record with a validation", proc)
        live = record["live"]
        assert set(live) == LIVE_KEYS
        assert record["steps"] == live["step"] and live["val_step"] <= live["step"]
        assert live["time_left_seconds"] == pytest.approx(max(5 - live["seconds"], 0.0))
        seen = curve_lines(run_dir)
        assert len(seen) >= live["step"] and all(CURVE_KEYS <= set(p) for p in seen)

        def grown():
            now = read_record(run_dir, warn=False)
            assert now is not None and record_problem(now) is None
            assert now["status"] == "running", "curve.jsonl did not grow while the run trained"
            lines = curve_lines(run_dir)
            return lines if len(lines) > len(seen) else None

        lines = poll(grown, "a longer curve.jsonl", proc)
        assert [p["step"] for p in lines] == list(range(1, len(lines) + 1))
        assert all(p["lr"] > 0 and p["lr_scale"] > 0 and p["tokens_per_second"] > 0 for p in lines)

        # `status RUN_ID` reads the live fields: the run is held still while it is asked, so both see one record.
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            held = read_record(run_dir)["live"]
            shown = harness_cli("status", "live", env={"HARNESS_RESULTS_DIR": str(results)}, timeout=120)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        assert shown.returncode == 0, shown.stderr
        assert str(held["step"]) in shown.stdout and f"{held['val_bpb']:.4f}" in shown.stdout, shown.stdout

        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    record = read_record(run_dir)
    assert record["status"] == "ok" and record["val_bpb_post_quant"] is not None
    every = every_step(run_dir)
    assert [p["step"] for p in every] == list(range(1, record["steps"] + 1))  # each step exactly once
    assert every[-1]["tokens"] == record["tokens_seen"]

    # TensorBoard holds the curve's numbers (as float32) and the scores of record.
    assert record["tensorboard"] == str(boards / "live")
    events = EventAccumulator(record["tensorboard"])
    events.Reload()

    def scalars(tag):
        return {e.step: e.value for e in events.Scalars(tag)}

    for tag, key in (("train/loss", "train_loss"), ("train/lr", "lr"), ("train/grad_norm", "grad_norm"),
                     ("train/tokens_per_second", "tokens_per_second"), ("val/bpb", "val_bpb")):
        expected = {p["step"]: p[key] for p in every if p.get(key) is not None}
        assert expected and scalars(tag) == pytest.approx(expected, rel=1e-6), tag
    assert scalars("final/val_bpb_post_quant") == pytest.approx({record["steps"]: record["val_bpb_post_quant"]})
    assert scalars("final/artifact_total_bytes") == {record["steps"]: record["artifact_total_bytes"]}


def test_the_live_record_fits_the_schema_before_and_after_the_first_validation(tmp_path):
    record = {"schema_version": 2, "run_id": "r", "status": "running", "variant": "baseline", "seed": 1,
              "budget_name": "tiny", "config": {}, "started_at": "2026-01-01T00:00:00Z"}
    view = LiveRecord(tmp_path, record, enabled=True, max_steps=None, cap_seconds=60.0)
    curve: list[dict] = []
    view.start(curve)
    assert read_record(tmp_path)["live"]["step"] == 0
    curve.append({"step": 1, "seconds": 0.5, "tokens": 64, "train_loss": None, "lr": 0.04, "lr_scale": 1.0,
                  "grad_norm": None, "tokens_per_second": 128.0})
    view.refresh()
    live = read_record(tmp_path)["live"]  # read_record returns None for a record the schema refuses
    assert live["train_loss"] is None and live["val_bpb"] is None and live["max_steps"] is None
    curve[-1].update(val_loss=3.0, val_bpb=2.5)
    view.validated(1, 2.5)
    view.refresh()
    assert read_record(tmp_path)["live"]["val_bpb"] == 2.5
    assert record_problem({**record, "live": {**live, "step": "one"}}) == "field 'live.step' should be an integer, " \
                                                                          "got 'one'"
    assert record_problem({**record, "curve": [{"step": 1, "lr": "high"}]}) is not None


def test_a_resumed_run_rewrites_the_curve_from_its_checkpoint(tmp_path):
    """Points a stopped attempt appended after its checkpoint are not kept twice: the curve restarts at the
    checkpoint's."""
    record = {"run_id": "r"}
    stopped = [{"step": s, "seconds": s / 10, "tokens": 64 * s, "train_loss": 3.0} for s in range(1, 6)]
    first = LiveRecord(tmp_path, record, enabled=True, max_steps=10, cap_seconds=1.0)
    first.start([])
    first.curve.extend(stopped)
    first.refresh()  # five steps appended; the checkpoint was taken at step 3
    first.close()
    assert len(every_step(tmp_path)) == 5
    resumed = LiveRecord(tmp_path, record, enabled=True, max_steps=10, cap_seconds=1.0)
    curve = stopped[:3]
    resumed.start(curve)
    curve.append({**stopped[3], "seconds": 0.45})
    resumed.refresh()
    assert [p["step"] for p in every_step(tmp_path)] == [1, 2, 3, 4]
    assert every_step(tmp_path)[-1]["seconds"] == 0.45


def test_tensorboard_missing_is_one_line_before_training(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # what `import tensorboard` meets where it is absent
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    result = harness_main("run", "--variant", "baseline", "--budget", str(write_budget(tmp_path / "b.toml")),
                          "--tensorboard", str(tmp_path / "tb"), env={"HARNESS_RESULTS_DIR": str(tmp_path / "r")})
    assert result.returncode == 2
    assert "pip install tensorboard" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "tb").exists()
