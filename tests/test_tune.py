"""Tuning: search spaces derived from config fields (ranges, log, choices, conditionals, narrowing from the
command line), a real Optuna study whose trials are ordinary runs (pruned, failed and NaN trials recorded),
resumption without lost or repeated trials, the winner as a preset file `run` accepts, and two workers on a
real single-node SLURM cluster sharing one journal storage while one of them is killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from conftest import REPO, harness_cli, harness_main, wait_for, write_budget
from harness.registry import get_variant, known_variant_names
from harness.tune import space as sp
from harness.tune import study as st
from harness.tune.worker import Worker

optuna.logging.set_verbosity(optuna.logging.WARNING)


def run_records(results: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(results.glob("*/run.json"))}


def trials_of(results: Path, name: str) -> list:
    settings = st.load_settings(st.settings_file(results, name))
    return st.open_study(settings).get_trials(deepcopy=False)


def test_every_variant_has_a_valid_space_over_its_own_fields_and_the_optimizer():
    for name in known_variant_names():
        variant, _ = get_variant(name)
        space = sp.resolve_space(variant.space, variant.config_cls, [], None, {})
        assert set(sp.OPTIMIZER_SPACE) <= set(space), name
        assert sp.from_json(sp.to_json(space)) == space  # what workers read back is what was planned


def test_conditional_dimensions_are_sampled_only_under_their_condition():
    variant, _ = get_variant("mps")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(24):
        trial = study.ask()
        params = sp.suggest(trial, variant.space, variant.config_cls())
        seen.add(params["mode"])
        assert ("bond_dim" in params) == (params["mode"] == "mps"), params
        assert ("tt_rank" in params) == (params["mode"] == "tt_linear"), params
        study.tell(trial, 1.0)
    assert seen == {"mps", "tt_linear"}


def test_the_command_line_narrows_restricts_and_fixes_the_space():
    variant, _ = get_variant("mla")
    space = sp.resolve_space(variant.space, variant.config_cls, ["kv_latent_dim=64..128", "matrix_lr=0.02..0.05:log",
                                                                 "rope_dim=0,16"], ["kv_latent_dim", "matrix_lr",
                                                                                    "rope_dim", "latent_norm"],
                             {"latent_norm": True})
    assert space == {"matrix_lr": sp.Float(0.02, 0.05, log=True), "kv_latent_dim": sp.Int(64, 128, log=False),
                     "rope_dim": sp.Choice(0, 16)}


@pytest.mark.parametrize("args,fragment", [
    (["--search", "kv_latent_dim=0..64"], "outside --kv-latent-dim's allowed range"),
    (["--search", "kv_latnt_dim=8..64"], "is not a parameter of MLAConfig"),
    (["--search", "matrix_lr=0.1"], "0.1"),  # one choice is allowed; check the error below instead
    (["--search", "matrix_lr=0.2..0.1"], "is empty"),
    (["--only", "rank"], "--only 'rank' is not in the search space"),
    (["--objectives", "val_bpb,artifact_bytes", "--pruner", "median"], "Optuna cannot prune multi-objective"),
    (["--objectives", "loss"], "choose from val_bpb, artifact_bytes, tokens_per_second"),
    (["--report-at", "0.5,1.0"], "strictly between 0 and 1"),
    (["--storage", "studies.txt"], "give sqlite, journal"),
])
def test_tune_mistakes_are_one_line_errors(tmp_path, args, fragment):
    done = harness_main("tune", "--variant", "mla", "--budget", "smoke", "--dry-run", "--results-dir",
                        str(tmp_path / "r"), *args)
    if args == ["--search", "matrix_lr=0.1"]:
        assert done.returncode == 0 and "matrix_lr {0.1}" in done.stdout, done.stderr
        return
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert fragment in done.stderr, done.stderr
    assert not (tmp_path / "r").exists()


def test_a_study_over_a_multi_device_budget_is_refused():
    done = harness_main("tune", "--variant", "baseline", "--budget", "10min-8xh100", "--dry-run")
    assert done.returncode == 2 and "tune runs each trial on one device" in done.stderr


@pytest.fixture
def tiny(tmp_path) -> Path:
    return write_budget(tmp_path / "tiny.toml", warmup_steps=0)


def test_a_twelve_trial_study_with_two_workers_prunes_and_every_trial_is_a_run(tmp_path, tiny):
    results = tmp_path / "results"
    done = harness_cli("tune", "--variant", "baseline", "--budget", str(tiny), "--trials", "12", "--workers", "2",
                       "--max-steps", "16", "--search", "matrix_lr=0.001..1:log", "--sampler-seed", "0",
                       "--reeval-top", "2", "--reeval-seeds", "2", "--name", "smoke12", "--results-dir", str(results),
                       timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    trials = trials_of(results, "smoke12")
    states = [t.state.name for t in trials]
    assert len(trials) == 12 and set(states) <= {"COMPLETE", "PRUNED"}, states
    assert states.count("PRUNED") >= 1 and states.count("COMPLETE") >= 4, states
    records = run_records(results)
    trial_runs = {k: r for k, r in records.items() if r["study"]}
    assert sorted(trial_runs) == sorted(t.user_attrs["run_id"] for t in trials)  # one run per trial, no more
    for t in trials:
        record = records[t.user_attrs["run_id"]]
        assert record["study"]["trial"] == t.number and record["study"]["params"] == t.params
        assert record["status"] == ("pruned" if t.state.name == "PRUNED" else "ok")
        if record["status"] == "pruned":  # stopped at a report point, with the value the pruner judged
            assert record["pruned_at"]["fraction"] in (0.25, 0.5, 0.75) and record["steps"] < 16
            assert t.intermediate_values[round(100 * record["pruned_at"]["fraction"])] == record["pruned_at"][
                "val_bpb"]
        else:
            assert t.values == [record["val_bpb_post_quant"]]
    # The top two were run again under a second seed; the winner is the best mean over both seeds.
    reeval = [r for r in records.values() if (r["sweep"] or {}).get("name") == "smoke12-reeval"]
    assert len(reeval) == 2 and {r["seed"] for r in reeval} == {1338}
    top2 = sorted((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.values[0])[:2]
    means = {t.number: (t.values[0] + next(r["val_bpb_post_quant"] for r in reeval if r["config"] ==
                                             records[t.user_attrs["run_id"]]["config"])) / 2 for t in top2}
    winner = min(means, key=means.get)
    presets = results / "studies" / "smoke12.presets.toml"
    assert f"trial {winner}: val_bpb {means[winner]:.4f} ± " in presets.read_text()
    # The preset file reproduces the winning trial exactly (same config, seed, steps and CPU threads as the
    # worker had → same score; another thread count changes the order of float sums, by ~1e-6).
    threads = str(max(1, (os.cpu_count() or 1) // 2))
    again = harness_cli("run", "--variant", "baseline", "--budget", str(tiny), "--preset-file", str(presets),
                        "--max-steps", "16", "--results-dir", str(tmp_path / "again"), "--quiet",
                        env={"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})
    assert again.returncode == 0, again.stderr
    (rerun,) = run_records(tmp_path / "again").values()
    won = trials[winner]
    assert rerun["config"] == records[won.user_attrs["run_id"]]["config"] and rerun["preset"] == "smoke12/best"
    assert rerun["val_bpb_post_quant"] == pytest.approx(won.values[0], abs=1e-9)
    html = (tmp_path / "reports" / "smoke12.html").read_text()
    assert "study smoke12" in html and "importance for val_bpb" in html and "pruned (val_bpb when stopped)" in html
    status = harness_cli("status", "smoke12", "--results-dir", str(results))
    assert status.returncode == 0 and status.stdout.count("  trial ") == 12 and "pruned at" in status.stdout


FAULTY = '''
from dataclasses import dataclass
from harness.config import param
from harness.model import GPT, GPTConfig
from harness.registry import register
from harness.tune.space import Choice


@dataclass(frozen=True)
class FaultyConfig(GPTConfig):
    fault: str = param("none", "none, nan (a NaN loss) or error (the build raises)", choices=("none", "nan", "error"))


def build(c):
    if c.fault == "error":
        raise RuntimeError("this configuration cannot be built")
    model = GPT(c)
    if c.fault == "nan":
        for p in model.parameters():
            p.data.fill_(float("nan"))
    return model


register("faulty", config=FaultyConfig, build=build, space={"fault": Choice("none", "nan", "error")})
'''


def test_failed_and_nan_trials_are_recorded_and_the_study_goes_on(tmp_path, tiny):
    plugin = tmp_path / "faulty.py"
    plugin.write_text(FAULTY)
    results = tmp_path / "results"
    dry = harness_cli("tune", "--variant", str(plugin), "--budget", str(tiny), "--trials", "4", "--only", "fault",
                      "--max-steps", "3", "--pruner", "none", "--name", "faulty", "--results-dir", str(results),
                      "--dry-run")
    assert dry.returncode == 0, dry.stderr
    # The settings as the command writes them; the first three trials are chosen, the rest sampled.
    from argparse import Namespace

    from harness.budget import load_budget
    from harness.tune.launch import plan_study

    variant, _ = get_variant(str(plugin))
    args = Namespace(objectives="val_bpb", pruner="none", report_at="0.5", trials=4, workers=1, only="fault",
                     search=[], name="faulty", budget=str(tiny), storage=None, executor="local", seed=1,
                     sampler_seed=0, max_steps=3, heartbeat_grace=120.0)
    settings = plan_study(args, {}, variant, None, load_budget(str(tiny)), results)
    path = st.save_settings(settings)
    study = st.open_study(settings)
    for fault in ("error", "nan", "none"):
        study.enqueue_trial({"fault": fault})
    lines: list[str] = []
    assert Worker(path, 0, echo=lines.append).work() == 4
    trials = trials_of(results, "faulty")
    by_fault = {t.params["fault"]: t for t in trials[:3]}
    assert by_fault["error"].state.name == "FAIL" and "cannot be built" in by_fault["error"].user_attrs["reason"]
    assert by_fault["nan"].state.name == "FAIL" and by_fault["nan"].user_attrs["reason"].startswith("diverged")
    assert by_fault["none"].state.name == "COMPLETE"
    assert all(t.user_attrs["counts"] for t in trials) and st.tally(study).counted == 4
    records = run_records(results)
    assert records[by_fault["nan"].user_attrs["run_id"]]["status"] == "diverged"  # the NaN run has its record
    ended = [line for line in lines if not line.endswith(" …")]  # a line as each trial starts, one as it ends
    assert len(ended) == 4 and "cannot be built" in ended[0] and len(lines) == 8


def test_an_interrupted_study_resumes_without_lost_or_repeated_trials(tmp_path, tiny):
    budget = write_budget(tmp_path / "slow.toml", warmup_steps=0, train_wallclock_seconds=4)
    results = tmp_path / "results"
    args = [sys.executable, "-m", "harness", "tune", "--variant", "baseline", "--budget", str(budget), "--trials", "4",
            "--pruner", "none", "--name", "resume", "--results-dir", str(results), "--sampler-seed", "1"]
    log = open(tmp_path / "first.log", "w")
    t0 = time.perf_counter()
    first = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)

    def first_trial_done():
        record = results / "resume-t0000" / "run.json"  # written atomically
        return record.exists() and json.loads(record.read_text())["status"] != "running"

    def second_trial_training():
        log_file = results / "resume-t0001" / "log.txt"  # the cheap check first: the study is polled only after
        if not (log_file.exists() and "step 1 |" in log_file.read_text()):
            return False
        return any(t.state.name == "RUNNING" and t.number == 1 for t in trials_of(results, "resume"))

    # The first trial (the process starting, setting up and training on the 4 s clock) sets the pace: every
    # later wait is a multiple of it, so a busy machine gets the time it needs.
    wait_for(first_trial_done, 900, "the first trial to finish")
    trial_seconds = time.perf_counter() - t0
    wait_for(second_trial_training, 3 * trial_seconds, "the second trial to be training")
    first.send_signal(signal.SIGTERM)
    assert first.wait(3 * trial_seconds) == 130
    trials = trials_of(results, "resume")
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL"]
    assert trials[1].user_attrs["counts"] is False and trials[1].user_attrs["status"] == "interrupted"

    second = harness_cli(*args[3:], timeout=max(300, 10 * trial_seconds))  # three more trials
    assert second.returncode == 0, second.stdout + second.stderr
    assert "4/4 trials — 4 complete, 0 pruned, 0 failed; 1 lost to stopped workers" in second.stdout
    trials = trials_of(results, "resume")
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE", "COMPLETE"]
    records = run_records(results)
    assert sorted(records) == sorted(t.user_attrs["run_id"] for t in trials)
    assert records[trials[1].user_attrs["run_id"]]["status"] == "interrupted"  # kept, never overwritten
    changed = harness_cli(*args[3:], "--objectives", "val_bpb,artifact_bytes", timeout=3 * trial_seconds)
    assert changed.returncode == 2 and "already exists with another objectives" in changed.stderr


# ---------------------------------------------------------------------------------------------- real SLURM

def test_two_slurm_workers_share_a_journal_and_a_killed_worker_leaves_its_trial_failed(cluster, tmp_path):
    budget = write_budget(tmp_path / "b.toml", warmup_steps=0, train_wallclock_seconds=5)
    results = tmp_path / "results"
    args = ["tune", "--variant", "baseline", "--budget", str(budget), "--trials", "6", "--workers", "2",
            "--executor", "slurm", "--pruner", "none", "--name", "slurm2", "--results-dir", str(results)]
    env = {"SLURM_CONF": str(cluster.conf)}
    submitted = harness_cli(*args, env=env)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert "submitted 2 worker(s)" in submitted.stdout and "journal:" in submitted.stdout
    assert (results / "studies" / "slurm2.journal").exists()
    settings = st.load_settings(st.settings_file(results, "slurm2"))

    def training(t) -> bool:
        log = results / t.user_attrs["run_id"] / "log.txt"
        return log.exists() and "step 1 |" in log.read_text()

    def both_training():
        trials = st.open_study(settings).get_trials(deepcopy=False)
        running = [t for t in trials if t.state.name == "RUNNING" and "worker" in t.user_attrs and training(t)]
        return running[0] if len({t.user_attrs["worker"]["slurm_job"] for t in running}) == 2 else None

    victim = wait_for(both_training, 240, "both workers to be training")
    time.sleep(1)
    # SIGKILL, as the OOM killer or a dying node would: the worker gets no chance to record anything.
    os.kill(victim.user_attrs["worker"]["pid"], signal.SIGKILL)
    followed = harness_cli(*args, "--wait", env=env, timeout=600)
    assert followed.returncode == 0, followed.stdout + followed.stderr
    trials = trials_of(results, "slurm2")
    killed = trials[victim.number]
    assert killed.state.name == "FAIL" and killed.user_attrs["status"] == "lost", killed.user_attrs
    assert killed.user_attrs["counts"] is False
    assert run_records(results)[killed.user_attrs["run_id"]]["status"] == "failed"
    assert sum(t.state.name == "COMPLETE" for t in trials) == 6 and len(trials) == 7
    workers = {t.user_attrs["worker"]["slurm_job"] for t in trials}
    assert len(workers) >= 2  # both workers ran trials of the one study
    assert (tmp_path / "reports" / "slurm2.html").exists()
