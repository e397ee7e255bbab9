"""Sweeps: plans that expand and validate like `run`, stable run ids, re-runs that skip what finished and redo
what did not (one record per run, old attempts kept), checkpoints that resume with the clock left, and the
same against a real single-node SLURM cluster (submitit job arrays, scancel, requeue, a 2-task job)."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO, assert_clock_stopped_at, every_step, harness_cli, harness_main, wait_for, write_budget
from harness import train
from harness.sweep import job, run_states, save_state, state_file
from harness.sweep.spec import load_spec_file


def records(results: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(results.glob("*/run.json"))}


def test_shipped_sweep_files_plan_the_study_and_the_example():
    study = load_spec_file(REPO / "sweeps" / "thirty-experiments.toml")
    assert len(study.runs) == 30 and len({r.run_id for r in study.runs}) == 30
    assert {r.budget for r in study.runs} == {"10min"} and sum(r.variant == "eigenweight" for r in study.runs) == 10
    example = load_spec_file(REPO / "sweeps" / "example.toml")
    assert [(r.variant, r.params, r.seed) for r in example.runs] == [
        ("baseline", {}, 1), ("baseline", {}, 2), ("eigenweight", {"rank": 32}, 1), ("eigenweight", {"rank": 32}, 2),
        ("eigenweight", {"rank": 64}, 1), ("eigenweight", {"rank": 64}, 2)]
    again = load_spec_file(REPO / "sweeps" / "example.toml")
    assert [r.run_id for r in again.runs] == [r.run_id for r in example.runs]  # ids are a function of the run
    three = load_spec_file(REPO / "sweeps" / "example.toml", seeds_override=3)
    assert len(three.runs) == 9


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    done = harness_main("sweep", "sweeps/example.toml", "--dry-run", "--results-dir", str(tmp_path / "r"))
    assert done.returncode == 0, done.stderr
    assert "6 runs — 0 done, 0 in flight, 6 to run" in done.stdout
    assert done.stdout.count("\n  run ") == 6 and "--rank 64" in done.stdout
    assert done.stdout.count("  run      eigenweight rank=32  (") == 2  # each planned run by its label
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("content,fragment", [
    ('budget = "smoke"\n[[runs]]\nvariant = "eigenweight"\ngrid = { rnak = [1, 2] }\n', "has no parameter 'rnak'"),
    ('budget = "smoke"\nseeds = 0\n[[runs]]\nvariant = "baseline"\n', "seeds = 0 runs nothing"),
    ('budget = "smoke"\n[[runs]]\nvariant = "eigenweight"\ngrid = { rank = [0] }\n', "--rank"),
    ('[[runs]]\nvariant = "baseline"\n', "no budget"),
    ('budget = "smoke"\n[[runs]]\nvariant = "baseline"\nseed = 3\n', "unknown key 'seed'"),
    ('budget = "smoke"\n', "no [[runs]] entries"),
])
def test_bad_sweep_files_are_one_line_errors(tmp_path, content, fragment):
    spec = tmp_path / "bad.toml"
    spec.write_text(content)
    done = harness_main("sweep", str(spec), "--dry-run", "--results-dir", str(tmp_path / "r"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and fragment in done.stderr, done.stderr


def test_command_line_grid_mistakes_are_one_line_errors(tmp_path):
    done = harness_main("sweep", "--variant", "eigenweight", "--grid", "rank", "--budget", "smoke", "--dry-run")
    assert done.returncode == 2 and "should look like name=value1,value2" in done.stderr
    done = harness_main("status", "nope", "--results-dir", str(tmp_path))
    assert done.returncode == 2 and "no sweep or study 'nope'" in done.stderr


def test_a_step_cap_is_planned_as_an_override_with_its_own_run_ids(tmp_path):
    capped = harness_main("sweep", "sweeps/example.toml", "--dry-run", "--max-steps", "7",
                          "--results-dir", str(tmp_path / "r"))
    assert capped.returncode == 0 and capped.stdout.count("--max-steps 7") == 6, capped.stdout
    plain = load_spec_file(REPO / "sweeps" / "example.toml")
    capped_plan = load_spec_file(REPO / "sweeps" / "example.toml", max_steps=7)
    assert {r.max_steps for r in capped_plan.runs} == {7}
    assert not {r.run_id for r in plain.runs} & {r.run_id for r in capped_plan.runs}  # never mistaken for each other
    bad = harness_main("sweep", "sweeps/example.toml", "--dry-run", "--max-steps", "0")
    assert bad.returncode == 2 and "--max-steps: must be at least 1" in bad.stderr
    spec = tmp_path / "caps.toml"  # in a file: at the top, and an entry's own
    spec.write_text('budget = "smoke"\nmax_steps = 5\n[[runs]]\nvariant = "baseline"\n'
                    '[[runs]]\nvariant = "baseline"\nmax_steps = 3\n')
    assert [r.max_steps for r in load_spec_file(spec).runs] == [5, 3]


def test_local_workers_each_get_their_own_gpu():
    """`sweep --executor local --parallel N` and `tune --workers N` give slot k its own GPU (all of them landed
    on cuda:0 before); more workers than GPUs share them round robin; no GPUs, no change."""
    from harness.hardware import worker_env

    gpus = ["0", "1", "2", "3"]
    assert [worker_env(k, gpus)["CUDA_VISIBLE_DEVICES"] for k in range(4)] == ["0", "1", "2", "3"]
    assert [worker_env(k, ["4", "6"])["CUDA_VISIBLE_DEVICES"] for k in range(3)] == ["4", "6", "4"]
    assert worker_env(1, gpus, devices_per_worker=2) == {"CUDA_VISIBLE_DEVICES": "2,3"}
    assert worker_env(0, []) == {}


SLURM_FILE = """name = "opts"
budget = "{budget}"
[[runs]]
variant = "baseline"
grid = {{ matrix_lr = [0.02, 0.04] }}
[slurm]
partition = "debug"
constraint = "from-the-file"
sbatch = ["--mail-type=END", "--comment=from-the-file"]
setup = ["echo replaced by the flags"]
"""


def test_dry_run_prints_the_sbatch_script_with_the_files_options_and_the_flags(tmp_path):
    """The script comes from submitit itself, needs no SLURM on this machine (PATH without srun or sbatch), and
    a flag replaces the [slurm] table's value (an --sbatch line, only the file's line for the same option)."""
    import sys

    spec = tmp_path / "opts.toml"
    spec.write_text(SLURM_FILE.format(budget=write_budget(tmp_path / "b.toml")))
    flags = ["--gres", "gpu:h100:8", "--constraint", "h100&ib", "--exclude", "node[01-03]", "--nodelist",
             "node07,node08", "--sbatch", "--mail-type=FAIL", "--sbatch", "--mail-user me@example.org",
             "--setup", "module load cuda/12.4", "--setup", "source ~/venv/bin/activate"]
    done = harness_main("sweep", str(spec), "--executor", "slurm", "--dry-run", "--results-dir", str(tmp_path / "r"),
                        *flags, env={"PATH": str(Path(sys.executable).parent)})
    assert done.returncode == 0, done.stderr
    script = done.stdout[done.stdout.index("#!/bin/bash"):]
    for line in ("#SBATCH --array=0-1%2", "#SBATCH --gres=gpu:h100:8", "#SBATCH --constraint='h100&ib'",
                 "#SBATCH --exclude='node[01-03]'", "#SBATCH --nodelist=node07,node08", "#SBATCH --partition=debug",
                 "#SBATCH --mail-type=FAIL", "#SBATCH --mail-user=me@example.org",
                 "#SBATCH --comment=from-the-file", "#SBATCH --signal=USR2@120"):
        assert f"\n{line}\n" in script, (line, script)
    assert "mail-type=END" not in script and "from-the-file'" not in script and "replaced" not in script
    setup = script.index("\nmodule load cuda/12.4\nsource ~/venv/bin/activate\n")
    assert setup < script.index("\nsrun ") and "-m submitit.core._submit" in script
    assert not (tmp_path / "r").exists()

    local = harness_main("sweep", str(spec), "--dry-run", "--results-dir", str(tmp_path / "r"), *flags)
    assert local.returncode == 0 and "#SBATCH" not in local.stdout and local.stdout.count("\n  run ") == 2
    tune = harness_main("tune", "--variant", "baseline", "--budget", str(tmp_path / "b.toml"), "--trials", "4",
                        "--workers", "2", "--executor", "slurm", "--dry-run", "--results-dir", str(tmp_path / "r"),
                        *flags)
    assert tune.returncode == 0, tune.stderr
    assert "#SBATCH --array=0-1%2" in tune.stdout and "\nmodule load cuda/12.4\n" in tune.stdout
    assert "#SBATCH --gres=gpu:h100:8" in tune.stdout and "-m submitit.core._submit" in tune.stdout


@pytest.mark.parametrize("flags,fragment", [
    (["--gres", "gpu"], "should be name[:type]:count"),
    (["--gres", "gpu:h100:eight"], "should be name[:type]:count"),
    (["--gres", "gpu:4"], "asks for 4 GPU(s) per node but budget"),
    (["--nodelist", ""], "non-empty SLURM node list"),
    (["--exclude", "node1 node2"], "non-empty SLURM node list"),
    (["--constraint", "a\nb"], "should be one non-empty line"),
    (["--setup", "module load x\nrm -rf ~"], "should be one non-empty line"),
    (["--sbatch", "mail-type=END"], "is not an sbatch option"),
    (["--sbatch", "--mail-type=END --x"], "is not an sbatch option"),
    (["--sbatch", "--time=5"], "the harness sets --time itself"),
    (["--sbatch", "--array=0-3"], "the harness sets --array itself"),
    (["--sbatch", "--partition=gpu"], "use --partition for that"),
    (["--slurm-table", "gres = 8"], "[slurm] gres = 8 should be a string"),
    (["--slurm-table", "nodes = 2"], "[slurm] has no option 'nodes'"),
])
def test_bad_slurm_options_are_one_line_errors(tmp_path, flags, fragment):
    budget = write_budget(tmp_path / "b.toml", device="cuda", device_count=2)
    table = flags[1] if flags[0] == "--slurm-table" else ""
    spec = write_spec(tmp_path, budget, "bad", f"[slurm]\n{table}\n")
    given = [] if table else flags
    done = harness_main("sweep", str(spec), "--executor", "slurm", "--dry-run", "--results-dir", str(tmp_path), *given)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and fragment in done.stderr, done.stderr


@pytest.fixture
def short_budget(tmp_path) -> Path:
    return write_budget(tmp_path / "short.toml", train_wallclock_seconds=4, warmup_steps=0)


def test_local_sweep_reruns_only_what_did_not_finish_and_reuses_a_plain_run(tmp_path, short_budget):
    results = tmp_path / "results"
    plain = harness_cli("run", "--variant", "baseline", "--matrix-lr", "0.04", "--budget", str(short_budget),
                        "--seed", "1", "--max-steps", "2", "--results-dir", str(results), "--quiet")
    assert plain.returncode == 0, plain.stderr
    (plain_id,) = records(results)
    plain_record = (results / plain_id / "run.json").read_bytes()
    args = ["sweep", "--variant", "baseline", "--grid", "matrix_lr=0.02,0.04", "--budget", str(short_budget),
            "--max-steps", "2", "--results-dir", str(results), "--name", "lr"]
    plan = harness_main(*args, "--dry-run")
    assert "1 done, 0 in flight, 1 to run" in plan.stdout, plan.stdout
    assert re.search(rf"(?m)^  reuse +baseline .*--matrix-lr 0.04\)  {plain_id}$", plan.stdout), plan.stdout
    first = harness_cli(*args)
    assert first.returncode == 0, first.stderr
    assert "1 done, 0 in flight, 1 to run" in first.stdout and "[1/1]" in first.stdout, first.stdout
    runs = records(results)
    (made_id,) = set(runs) - {plain_id}
    assert all(r["status"] == "ok" for r in runs.values())
    assert runs[made_id]["sweep"] == {"name": "lr", "params": {"matrix_lr": 0.02}}
    assert runs[made_id]["overrides"] == [{"name": "max_steps", "budget": 20000, "effective": 2}]
    assert (results / plain_id / "run.json").read_bytes() == plain_record  # reused as it is, not rewritten
    state = json.loads(state_file(results, "lr").read_text())
    (reused_point,) = state["reused"]
    assert state["reused"][reused_point] == plain_id and reused_point != made_id
    status = harness_cli("status", "lr", "--results-dir", str(results))
    assert re.search(rf"(?m)^  done +baseline .*ok: reuses {plain_id}.*  {plain_id}$", status.stdout), status.stdout
    from harness.report import grouped_section, load, tables
    from harness.sweep import reused_members

    page = grouped_section(tables.load_runs(results), "sweep", reused_members(results))
    assert "sweep lr (2 runs)" in page and f"runs/{plain_id}.html" in page and f"runs/{made_id}.html" in page
    assert {r.row["run_id"] for r in load(results, None, None, sweep="lr")} == {plain_id, made_id}  # its own page

    again = harness_cli(*args)
    assert "2 done, 0 in flight, 0 to run" in again.stdout and records(results) == runs

    broken = results / made_id / "run.json"
    broken.write_text(json.dumps({**runs[made_id], "status": "failed", "error": "RuntimeError: node lost"}))
    status = harness_cli("status", "lr", "--results-dir", str(results))
    said = next(line for line in status.stdout.splitlines() if made_id in line)
    assert said.split()[:2] == ["failed", "baseline"] and "node lost" in said, said  # its state, label, reason
    third = harness_cli(*args)
    assert "1 done, 0 in flight, 1 to run" in third.stdout, third.stdout
    after = records(results)
    assert set(after) == set(runs) and after[made_id]["status"] == "ok"
    kept = results / ".attempts" / made_id / "1" / "run.json"
    assert json.loads(kept.read_text())["error"] == "RuntimeError: node lost"  # nothing lost, nothing duplicated

    for unfinished in ("running", "failed"):  # only a finished run stands for a planned one
        (results / plain_id / "run.json").write_text(json.dumps({**runs[plain_id], "status": unfinished}))
        plan = harness_main(*args, "--dry-run")
        assert re.search(rf"(?m)^  run +baseline .*  {reused_point}$", plan.stdout), plan.stdout
        assert "reuse" not in plan.stdout, plan.stdout


def stop_at_the_first_validation(log_file: Path, finished: threading.Event) -> None:
    """Ask the run in this process to checkpoint and stop once its log shows a periodic validation: part-way
    through the clock, however long this machine took to get there."""
    while not finished.is_set():
        if log_file.exists() and re.search(r"(?m)^step \d+ \| val_loss", log_file.read_text()):
            train.request_checkpoint()
            return
        time.sleep(0.05)


def test_a_stopped_run_resumes_with_only_the_clock_it_had_left(tmp_path):
    budget = write_budget(tmp_path / "b.toml", train_wallclock_seconds=6, warmup_steps=0, val_every_seconds=2)
    results = tmp_path / "results"
    plan = load_spec_file(write_spec(tmp_path, budget), None)
    state = save_state(plan, results, None)
    run_id = plan.runs[0].run_id
    finished = threading.Event()
    stopper = threading.Thread(target=stop_at_the_first_validation, args=(results / run_id / "log.txt", finished))
    stopper.start()
    try:
        assert job.execute(state, run_id) == "interrupted"
    finally:
        finished.set()
        stopper.join()
    first = json.loads((results / run_id / "run.json").read_text())
    # Stopped part-way through the clock, after its first validation (2 s of the clock).
    assert (results / run_id / train.CHECKPOINT_FILE).exists() and 2.0 <= first["train_seconds"] < 6.0
    assert run_states(json.loads(state.read_text()))[run_id]["reason"].endswith("(checkpoint: resumes)")

    assert job.execute(state, run_id) == "ok"
    final = json.loads((results / run_id / "run.json").read_text())
    assert final["resumed"][0]["step"] == first["steps"]
    assert_clock_stopped_at(results / run_id, final, 6.0)  # one clock, charged once
    assert final["started_at"] == first["started_at"] and final["steps"] > first["steps"]
    steps = [point["step"] for point in every_step(results / run_id)]
    assert steps == list(range(1, final["steps"] + 1))  # the curve continues, no step lost or repeated
    assert not (results / run_id / train.CHECKPOINT_FILE).exists()


def write_spec(tmp_path: Path, budget: Path, name: str = "resume", runs: str = "") -> Path:
    spec = tmp_path / f"{name}.toml"
    spec.write_text(f'name = "{name}"\nbudget = "{budget}"\nseeds = 1\n[[runs]]\nvariant = "baseline"\n{runs}')
    return spec


# ---------------------------------------------------------------------------------------------- real SLURM

def sweep_states(results: Path, name: str) -> dict:
    return run_states(json.loads(state_file(results, name).read_text()))


def test_slurm_sweep_runs_cancelled_jobs_again_and_requeued_jobs_resume(cluster, tmp_path):
    budget = write_budget(tmp_path / "b.toml", train_wallclock_seconds=20, warmup_steps=0, val_every_seconds=0)
    results = tmp_path / "results"
    spec = write_spec(tmp_path, budget, "slurm3", 'grid = { matrix_lr = [0.02, 0.03, 0.04] }\n')
    args = ["sweep", str(spec), "--executor", "slurm", "--results-dir", str(results), "--max-concurrent", "2"]
    t0 = time.perf_counter()
    first = harness_cli(*args, env={"SLURM_CONF": str(cluster.conf)})
    assert first.returncode == 0, first.stderr
    assert time.perf_counter() - t0 < 30 and "submitted 3 runs" in first.stdout  # returns at once
    queued = sweep_states(results, "slurm3")
    assert {s["state"] for s in queued.values()} <= {"pending", "running"}, queued  # in flight, not failed
    state = json.loads(state_file(results, "slurm3").read_text())
    jobs = {s["run_id"]: s["job_id"] for s in state["submissions"]}
    cancel_id, requeue_id, _ = sorted(jobs, key=lambda run_id: jobs[run_id])  # the array's first two run first

    def started(run_id):
        path = results / run_id / "log.txt"
        return path.exists() and "step 1 |" in path.read_text()

    wait_for(lambda: started(cancel_id) and started(requeue_id), 240, "two runs training")
    subprocess.run(["scancel", jobs[cancel_id]], env=cluster.env, check=True)
    subprocess.run(["scancel", "--signal=USR2", jobs[requeue_id]], env=cluster.env, check=True)
    # A requeued job waits out SLURM's requeue delay (about two minutes); let it start now.
    wait_for(lambda: (jobs[requeue_id], "PENDING") in cluster.squeue(), 120, "the job to be requeued")
    subprocess.run(["scontrol", "update", f"JobId={jobs[requeue_id]}", "StartTime=now"], env=cluster.env, check=True)
    wait_for(lambda: all(s["state"] not in ("running", "pending") for s in sweep_states(results, "slurm3").values())
             and not cluster.squeue(), 400, "every job to end")

    done = records(results)
    assert done[requeue_id]["status"] == "ok" and len(done[requeue_id]["resumed"]) == 1, done[requeue_id]
    assert_clock_stopped_at(results / requeue_id, done[requeue_id], 20.0)
    assert done[cancel_id]["status"] == "interrupted"
    status = harness_cli("status", "slurm3", "--results-dir", str(results), env={"SLURM_CONF": str(cluster.conf)})
    assert "2 done" in status.stdout and "1 failed" in status.stdout and cancel_id in status.stdout

    again = harness_cli(*args, env={"SLURM_CONF": str(cluster.conf)})
    assert "2 done, 0 in flight, 1 to run" in again.stdout, again.stdout
    wait_for(lambda: records(results)[cancel_id]["status"] == "ok", 300, "the cancelled run to finish again")
    final = records(results)
    assert len(final) == 3 and all(r["status"] == "ok" for r in final.values())


def test_a_two_task_slurm_job_trains_with_distributed_data_parallel(cluster, tmp_path):
    """Also: the job runs the --setup lines first, slurmctld takes an extra --sbatch option, and the script
    --dry-run prints is the one submitted."""
    budget = write_budget(tmp_path / "b2.toml", train_wallclock_seconds=4, warmup_steps=0, device_count=2)
    results = tmp_path / "results"
    spec = write_spec(tmp_path, budget, "ddp2")
    args = ["sweep", str(spec), "--executor", "slurm", "--results-dir", str(results), "--sbatch", "--comment=golf-ddp2",
            "--setup", "export GOLF_SETUP_MARK=seen", "--setup", 'echo "setup saw $GOLF_SETUP_MARK"']
    preview = harness_main(*args, "--dry-run")
    assert preview.returncode == 0, preview.stderr
    done = harness_cli(*args, "--wait", env={"SLURM_CONF": str(cluster.conf)}, timeout=400)
    assert done.returncode == 0, done.stdout + done.stderr
    (record,) = records(results).values()
    assert record["status"] == "ok" and record["world_size"] == 2 and record["hardware_matches_budget"]
    assert (tmp_path / "reports" / "ddp2.html").exists()
    (submission,) = json.loads(state_file(results, "ddp2").read_text())["submissions"]
    assert "setup saw seen" in Path(submission["log"]).read_text()
    (submitted,) = (results / "sweeps" / "ddp2" / "slurm").glob("*/*_submission.sh")
    assert preview.stdout.rstrip().endswith(submitted.read_text().rstrip())  # what --dry-run shows, submitted
    job = subprocess.run(["scontrol", "show", "job", submission["job_id"]], env=cluster.env, capture_output=True,
                         text=True).stdout
    assert "Comment=golf-ddp2" in job, job


def test_sbatch_refusing_the_jobs_is_a_one_line_error(cluster, tmp_path):
    spec = write_spec(tmp_path, write_budget(tmp_path / "b.toml"), "refused")
    done = harness_cli("sweep", str(spec), "--executor", "slurm", "--partition", "nosuchpartition",
                       "--results-dir", str(tmp_path / "r"), env={"SLURM_CONF": str(cluster.conf)})
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "sbatch refused the jobs" in done.stderr and "partition" in done.stderr.lower()
