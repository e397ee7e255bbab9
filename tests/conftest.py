"""Shared fixtures: tiny budgets written to temp files, and helpers that run the real CLI (in a subprocess, or in
this process for commands that refuse their input)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import slurm_cluster

REPO = Path(__file__).resolve().parent.parent

# `pytest -n 2` (the suite's command) runs two test files at a time, one per core: each worker, and every
# process it starts, then keeps to one thread, so two workers do not fight over the same two cores.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

TINY_BUDGET = {
    "description": "tiny test budget", "train_wallclock_seconds": 30, "device": "cpu", "device_count": 1,
    "tokens_per_step": 1024, "micro_batch_tokens": 1024, "seq_len": 64, "dataset": "builtin",
    "val_tokens_cap": 4096, "eval_seconds_limit": 60, "val_every_seconds": 0, "log_every_seconds": 5,
    "artifact_cap_bytes": 16_000_000, "warmup_steps": 1,
}
TINY_MODEL = {"num_layers": 2, "model_dim": 32, "num_heads": 2, "num_kv_heads": 1, "mlp_mult": 2,
              "warmdown_steps": 5}


def toml_value(v) -> str:
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v)


def write_budget(path: Path, budget: dict | None = None, model: dict | None = None, **changes) -> Path:
    """A budget TOML file: the tiny budget with `changes`, and a [model] table."""
    values = {**TINY_BUDGET, **(budget or {}), **changes}
    lines = [f"{k} = {toml_value(v)}" for k, v in values.items() if v is not None]
    lines += ["", "[model]"] + [f"{k} = {toml_value(v)}" for k, v in {**TINY_MODEL, **(model or {})}.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(autouse=True)
def harness_left_intact():
    """No test, and no plugin a test loads in this process, may leave the harness changed in memory: the
    checks every other test relies on would no longer be the harness's (plugins that patch it run in a
    subprocess)."""
    yield
    from harness import integrity

    changed = integrity.verify()
    assert not changed, f"the harness was changed in memory: {changed[:3]}"


@pytest.fixture
def tiny_budget(tmp_path) -> Path:
    return write_budget(tmp_path / "tiny.toml")


def harness_cli(*args: str, env: dict | None = None, timeout: float = 300, cwd: Path = REPO,
                module: tuple[str, ...] = ("-m", "harness")) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, *module, *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def harness_main(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The CLI's `main` in this process, with its output captured: for commands that refuse their input,
    where a subprocess would spend seconds importing torch to print one line. Anything that trains, waits
    or is killed goes through harness_cli."""
    from harness.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd, saved_term = dict(os.environ), os.getcwd(), signal.getsignal(signal.SIGTERM)
    os.environ.update(env or {})
    os.chdir(REPO)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse's own exits (--help)
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
        signal.signal(signal.SIGTERM, saved_term)
    return subprocess.CompletedProcess(["python", "-m", "harness", *args], code, out.getvalue(), err.getvalue())


def only_record(results_dir: Path) -> dict:
    records = sorted(Path(results_dir).glob("*/run.json"))
    assert len(records) == 1, f"expected one run record in {results_dir}, found {len(records)}"
    return json.loads(records[0].read_text())


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    absent = slurm_cluster.missing()
    if absent:
        if os.environ.get("CI"):
            pytest.fail(f"SLURM packages missing ({', '.join(absent)}); .ci/run installs slurmctld slurmd munge")
        pytest.skip(f"no SLURM here ({', '.join(absent)} missing): apt-get install slurmctld slurmd munge")
    c = slurm_cluster.Cluster(tmp_path_factory.mktemp("slurm")).start()
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(c.conf)
    yield c
    c.stop()
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old


def every_step(run_dir: Path) -> list[dict]:
    """The run's curve.jsonl: one point per optimizer step (run.json keeps a thinned copy)."""
    return [json.loads(line) for line in (Path(run_dir) / "curve.jsonl").read_text().splitlines()]


def assert_clock_stopped_at(run_dir: Path, record: dict, cap_seconds: float) -> None:
    """The clock stops at the first step that reaches the cap, so the overshoot is that one step; the record
    charges nothing after it but its bookkeeping, less than a step. Judged by this run's own step times, so a
    busy machine (longer steps) passes as an idle one does."""
    clock = [p["seconds"] for p in every_step(run_dir)]
    longest_step = max(b - a for a, b in zip([0.0] + clock, clock))
    assert clock[-2] < cap_seconds <= clock[-1] <= record["train_seconds"], (clock[-2:], record["train_seconds"])
    assert record["train_seconds"] - clock[-1] < longest_step, (clock[-1], record["train_seconds"], longest_step)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


# The files that take longest start first, so that with two workers the short ones fill in at the end instead of
# one long file running alone while the other worker idles (each file stays on one worker: `--dist loadfile`).
LONGEST_FIRST = ("test_variant_smoke.py", "test_techniques.py", "test_compile.py", "test_run.py", "test_tune.py",
                 "test_sweep.py", "test_preflight.py", "test_conformance.py", "test_report.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: n for n, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file keeps its own order
