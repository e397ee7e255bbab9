"""`python -m harness sweep` and `status`: a plan of runs → an executor → records in results/.

The plan (spec.py) is saved as results/sweeps/<name>.json — the runs and every submission — written only by
the sweep command, so jobs never share a file. Re-running a sweep re-plans it, skips runs whose record says
they finished, leaves alone runs whose job is still queued or running, and submits the rest (missing,
failed, interrupted: an interrupted run with a checkpoint resumes with the clock it had left).

A planned run that a finished run made outside the plan already is (a plain `run` of the same configuration,
budget, seed and overrides) is not trained again: the state's "reused" maps the planned id to that run's id,
and `status` and the report count it as the sweep's. Its record is left as it was.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness.checks import SAFE_NAME, read_json, safe_name
from harness.errors import UserError
from harness.results import read_record, write_json_atomic
from harness.sweep.job import FINISHED, previous_status
from harness.sweep.slurm import SlurmOptions, executor_parameters, sbatch_script
from harness.sweep.spec import Sweep
from harness.views import finished_line, planned_label

EXECUTORS = ("debug", "local", "slurm")
ACTIVE_SLURM = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING",
                "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT"}


def state_file(results_dir: Path, name: str) -> Path:
    return Path(results_dir) / "sweeps" / f"{name}.json"


def load_state(results_dir: Path, name: str) -> dict:
    safe_name(name, "sweep name")
    path = state_file(results_dir, name)
    if not path.exists():
        known = sorted(p.stem for p in (Path(results_dir) / "sweeps").glob("*.json"))
        raise UserError(f"no sweep or study {name!r} in {results_dir}; known sweeps: {', '.join(known) or 'none'}")
    return read_state(path)


def read_state(path: Path) -> dict:
    """A sweep's state file, checked: a damaged one is named, with how to rebuild it."""
    fix = "move it aside and run the sweep again to re-plan it (finished runs are found by their records)"
    state = read_json(path, "sweep state", fix)
    runs, submissions = state.get("runs"), state.get("submissions")
    problem = ("'runs' is not a list" if not isinstance(runs, list) else
               "'submissions' is not a list" if not isinstance(submissions, list) else
               "'results_dir' is not a path" if not isinstance(state.get("results_dir"), str) else None)
    for n, run in enumerate(runs if problem is None else []):
        if not (isinstance(run, dict) and isinstance(run.get("run_id"), str) and SAFE_NAME.fullmatch(run["run_id"])
                and isinstance(run.get("variant"), str) and isinstance(run.get("budget"), str)
                and isinstance(run.get("seed"), int) and isinstance(run.get("params"), dict)):
            problem = f"planned run {n + 1} is not a valid plan"
            break
    if problem is None and not all(isinstance(s, dict) and isinstance(s.get("run_id"), str) for s in submissions):
        problem = "a submission is not a valid entry"
    if problem:
        raise UserError(f"sweep state {path} is damaged ({problem}); {fix}")
    return state


def save_state(sweep: Sweep, results_dir: Path, previous: dict | None, reused: dict[str, str] | None = None) -> Path:
    path = state_file(results_dir, sweep.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"name": sweep.name, "source": sweep.source, "results_dir": str(Path(results_dir).resolve()),
             "runs": [r.to_dict() for r in sweep.runs], "reused": reused or {},
             "submissions": (previous or {}).get("submissions", []),
             "created_at": (previous or {}).get("created_at", now()), "updated_at": now()}
    write_json_atomic(path, state)
    return path


def finished_elsewhere(runs: list, results_dir: Path) -> dict[str, str]:
    """Planned run id → the id of a finished run, made outside the plan, that is the same run: the same
    RunSpec.config_hash() (variant, hashed config, budget with its dataset, techniques, seed, and every override:
    max_steps, data_dir, tokenizer, device, precision, compile), the same seed, run on the budget's device
    count, and a status the sweep counts as done. A planned run with a finished record of its own keeps it."""
    from harness.results import iter_records

    results_dir = Path(results_dir)
    wanted = {(r.config_hash, r.seed): r.run_id for r in runs
              if r.config_hash and previous_status(results_dir / r.run_id) not in FINISHED}
    if not wanted or not results_dir.is_dir():
        return {}
    best: dict[tuple, tuple] = {}
    for run_dir, record in iter_records(results_dir):
        key = (record.get("config_hash"), record["seed"])
        if (key not in wanted or record["status"] not in FINISHED or run_dir.name == wanted[key]
                or any(o.get("name") == "device_count" for o in record.get("overrides") or [])):
            continue
        rank = (record["status"] == "ok", str(record.get("finished_at") or ""), run_dir.name)  # ok, then newest
        if key not in best or rank > best[key][0]:
            best[key] = (rank, run_dir.name)
    return {wanted[key]: found for key, (_, found) in best.items()}


def reused_members(results_dir: Path) -> dict[str, list[dict]]:
    """run id → [{"name", "params"}] of the sweeps that count the run as theirs by reusing it (their state's
    "reused"), as a record's own "sweep" says it for the runs a sweep made."""
    out: dict[str, list[dict]] = {}
    for path in sorted((Path(results_dir) / "sweeps").glob("*.json")):
        try:
            state = read_state(path)
        except UserError:
            continue  # a damaged state file is named by the sweep and status commands, not here
        plans = {plan["run_id"]: plan for plan in state["runs"]}
        for planned, found in (state.get("reused") or {}).items():
            if planned in plans and isinstance(found, str):
                out.setdefault(found, []).append({"name": state.get("name", path.stem),
                                                  "params": plans[planned].get("swept") or {}})
    return out


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """job id → SLURM state for the jobs squeue still knows (queued, running, requeued, …)."""
    if not job_ids:
        return {}
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(job_ids)], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    states = {}
    for line in out.stdout.splitlines():
        job, _, state = line.strip().partition(" ")
        states[job] = state
    return states


def run_states(state: dict) -> dict[str, dict]:
    """planned run id → {"state", "reason", "job", "log", "run_id"} from the results store and SLURM ("run_id":
    the run that is this point: the planned one, or the finished run it reuses)."""
    results_dir = Path(state["results_dir"])
    last = {s["run_id"]: s for s in state["submissions"]}
    queue = slurm_states([s["job_id"] for s in last.values() if s.get("executor") == "slurm"])
    out = {}
    for plan in state["runs"]:
        run_id = plan["run_id"]
        sub = last.get(run_id, {})
        record_status = previous_status(results_dir / run_id)
        job_state = queue.get(str(sub.get("job_id")))
        found = (state.get("reused") or {}).get(run_id)
        found_status = previous_status(results_dir / found) if found and record_status not in FINISHED else None
        if found_status in FINISHED:
            out[run_id] = {"state": "done", "reason": f"{found_status}: reuses {found}", "job": None,
                           "log": str(results_dir / found / "log.txt"), "run_id": found}
            continue
        if record_status in FINISHED:
            kind, reason = "done", record_status
        elif job_state in ACTIVE_SLURM:
            kind, reason = ("running" if job_state == "RUNNING" else "pending"), job_state.lower()
        elif record_status == "running" and sub.get("executor") != "slurm" and record_is_fresh(results_dir / run_id):
            kind, reason = "running", "running"
        elif record_status in ("failed", "interrupted") or (record_status == "running" and job_state is None
                                                             and sub):
            kind, reason = "failed", failure_reason(results_dir / run_id, record_status)
        elif sub and sub.get("executor") == "slurm":
            kind, reason = "failed", "job ended without a record (see its SLURM log)"
        else:
            kind, reason = "missing", "not submitted yet"
        out[run_id] = {"state": kind, "reason": reason, "job": sub.get("job_id"),
                       "log": sub.get("log") or str(results_dir / run_id / "log.txt"), "run_id": run_id}
    return out


def record_is_fresh(run_dir: Path, seconds: float = 600) -> bool:
    try:
        return time.time() - (run_dir / "run.json").stat().st_mtime < seconds
    except OSError:
        return False


def failure_reason(run_dir: Path, status: str | None) -> str:
    record = read_record(run_dir)
    if record is None:
        return "no readable record"
    if status == "interrupted":
        resumable = (run_dir / "checkpoint.pt").exists()
        return f"interrupted at step {record.get('steps')}" + (" (checkpoint: resumes)" if resumable else "")
    if status == "running":
        return "its job is gone (killed without a chance to record)"
    return str(record.get("error") or status)


def time_limit_minutes(budget, margin_minutes: float) -> int:
    """Training clock + evaluations (during training, final and round trip) + start-up, plus a margin."""
    evals = max(2, 2 + int(budget.train_wallclock_seconds // max(budget.val_every_seconds, 1))
                if budget.val_every_seconds else 2)
    seconds = budget.train_wallclock_seconds + evals * budget.eval_seconds_limit + 120
    return math.ceil(seconds / 60 * 1.1 + margin_minutes)


def submit(sweep: Sweep, results_dir: Path, executor: str, parallel: int = 1,
           slurm: SlurmOptions | None = None, dry_run: bool = False, echo=print) -> dict:
    """Plan → state file → submit what is not finished or in flight. Returns the updated state."""
    previous = None
    path = state_file(results_dir, sweep.name)
    if path.exists():
        previous = read_state(path)
    reused = finished_elsewhere(sweep.runs, results_dir)
    state_path = save_state(sweep, results_dir, previous, reused) if not dry_run else path
    state = read_state(state_path) if not dry_run else {
        "name": sweep.name, "results_dir": str(results_dir), "runs": [r.to_dict() for r in sweep.runs],
        "reused": reused, "submissions": (previous or {}).get("submissions", [])}
    states = run_states(state)
    todo = [r for r in sweep.runs if states[r.run_id]["state"] in ("missing", "failed")]
    counts = {k: sum(1 for s in states.values() if s["state"] == k) for k in ("done", "running", "pending")}
    echo(f"sweep {sweep.name}: {len(sweep.runs)} runs — {counts['done']} done, "
         f"{counts['running'] + counts['pending']} in flight, {len(todo)} to run ({executor})")
    if dry_run:
        for r in sweep.runs:
            mark = "run " if r in todo else "reuse" if r.run_id in reused else states[r.run_id]["state"]
            params = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in r.params.items())
            cap = f" --max-steps {r.max_steps}" if r.max_steps else ""
            cap += f" --with {r.with_}" if r.with_ else ""
            echo(f"  {mark:<8} {planned_label(r.to_dict())}  ({r.variant}{':' + r.preset if r.preset else ''} "
                 f"--budget {r.budget} --seed {r.seed}{cap} {params}".rstrip() + f")  {states[r.run_id]['run_id']}")
        if executor == "slurm" and todo:
            for budget, runs, _, params in slurm_arrays(todo, path, slurm or SlurmOptions()):
                echo(f"\nsbatch script for the {len(runs)} run(s) of budget {budget.name}, as submitit would submit "
                     f"it{' (one job array)' if len(runs) > 1 else ''}:")
                echo(sbatch_script(slurm_folder(path) / "%j", params, len(runs)).rstrip())
        return state
    if not todo:
        return state
    submissions = {"debug": run_debug, "local": run_local, "slurm": run_slurm}[executor](
        todo, state_path, Path(state["results_dir"]), parallel=parallel, slurm=slurm or SlurmOptions(), echo=echo)
    state = read_state(state_path)
    state["submissions"] += submissions
    state["updated_at"] = now()
    write_json_atomic(state_path, state)
    return state


def run_debug(todo, state_path: Path, results_dir: Path, echo=print, **_) -> list[dict]:
    """In this process, one after another: tracebacks reach the terminal (for debugging a plugin)."""
    from harness.sweep.job import execute

    out = []
    for n, r in enumerate(todo, 1):
        out.append({"run_id": r.run_id, "executor": "debug", "job_id": None, "submitted_at": now()})
        try:
            status = execute(state_path, r.run_id)
        except RuntimeError as exc:  # the run recorded itself as failed; go on with the others
            status = f"failed ({exc})"
        echo(finished_line(n, len(todo), r.to_dict(), status, results_dir / r.run_id))
    return out


def run_local(todo, state_path: Path, results_dir: Path, parallel: int = 1, echo=print, **_) -> list[dict]:
    """Subprocesses on this machine, `parallel` at a time, each in a slot with its own GPU where there are GPUs;
    each run's output goes to the sweep's logs/."""
    import queue

    from harness.hardware import visible_gpus, worker_env

    logs = state_path.parent / state_path.stem / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    done_count = [0]
    gpus = visible_gpus()
    if gpus and parallel > len(gpus):
        echo(f"note: {parallel} runs at a time on {len(gpus)} GPU(s): some share a GPU, and their throughput and "
             f"wallclock-bound scores suffer (the report flags them as contended)")
    slots: queue.Queue[int] = queue.Queue()
    for slot in range(max(1, parallel)):
        slots.put(slot)

    def one(r) -> dict:
        log = logs / f"{r.run_id}.out"
        slot = slots.get()
        try:
            with open(log, "w", encoding="utf-8") as out:
                env = {**os.environ, "PYTHONUNBUFFERED": "1", **worker_env(slot, gpus)}
                code = subprocess.run([sys.executable, "-m", "harness.sweep.job", str(state_path), r.run_id],
                                      stdout=out, stderr=subprocess.STDOUT, env=env)
        finally:
            slots.put(slot)
        done_count[0] += 1
        status = previous_status(results_dir / r.run_id)
        if status == "running":  # its process ended without recording how: say so in its record
            status = mark_dead(results_dir / r.run_id, f"its process exited with code {code.returncode} before "
                                                       f"recording an end (log: {log})")
        status = status or f"no record (exit {code.returncode})"
        echo(finished_line(done_count[0], len(todo), r.to_dict(), status, results_dir / r.run_id))
        return {"run_id": r.run_id, "executor": "local", "job_id": None, "submitted_at": now(), "log": str(log)}

    with ThreadPoolExecutor(max(1, parallel)) as pool:
        return list(pool.map(one, todo))


def mark_dead(run_dir: Path, reason: str) -> str:
    """A record left at "running" by a process that is gone becomes "failed", with the reason."""
    record = read_record(run_dir)
    if record is None or record["status"] != "running":
        return record["status"] if record else "no record"
    record.update(status="failed", error=reason, finished_at=now())
    write_json_atomic(run_dir / "run.json", record)
    return "failed"


def failures(name: str, results_dir: Path, echo=print) -> int:
    """After a sweep: each run that failed or never ran, why, and where its log is. Returns how many."""
    state = load_state(results_dir, name)
    states = run_states(state)
    bad = {run_id: s for run_id, s in states.items() if s["state"] in ("failed", "missing")}
    for run_id, s in bad.items():  # a record its dead job left at "running" now says how the run ended
        if previous_status(Path(state["results_dir"]) / run_id) == "running":
            mark_dead(Path(state["results_dir"]) / run_id, s["reason"])
    if bad:
        echo(f"sweep {name}: {len(bad)} of {len(states)} runs did not finish:")
        for run_id, s in bad.items():
            echo(f"  {run_id}: {s['reason']} (log: {s['log']})")
        echo(f"re-run the same sweep command to retry them; status: python -m harness status {name}")
    return len(bad)


@contextlib.contextmanager
def redirected_stderr(file):
    """Send this process's file descriptor 2 (where sbatch, run by submitit, writes) to `file` for a while."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(file.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def submit_array(executor, calls: list) -> list:
    """Submit `calls` as one job array; sbatch refusing them is a UserError with sbatch's own reason."""
    with tempfile.TemporaryFile("w+") as said, redirected_stderr(said):
        try:
            with executor.batch():
                jobs = [executor.submit(call) for call in calls]
            error = None
        except Exception as exc:  # sbatch said no: a wrong partition, account or QOS, a limit
            error = exc
        said.seek(0)
        sbatch_said = said.read()
    if error is not None:
        lines = [ln for ln in (sbatch_said + str(error)).splitlines() if "error" in ln.lower()]
        reason = (lines[0] if lines else str(error).splitlines()[-1]).strip()
        raise UserError(f"sbatch refused the jobs: {reason} (check --partition, --account, --qos, --sbatch)") from None
    if sbatch_said.strip():
        sys.stderr.write(sbatch_said)
    return jobs


def job_log(job) -> str:
    return str(Path(str(job.paths.stdout).replace("%t", "0")))


def slurm_folder(state_path: Path) -> Path:
    return state_path.parent / state_path.stem / "slurm"


def slurm_arrays(todo, state_path: Path, slurm: SlurmOptions) -> list[tuple]:
    """One job array per budget (a budget fixes the resources): (budget, its runs, time limit in minutes,
    submitit's parameters), every one checked before anything is submitted."""
    from harness.budget import load_budget

    by_budget: dict[str, list] = {}
    for r in todo:
        by_budget.setdefault(r.budget, []).append(r)
    arrays = []
    for budget_name, runs in by_budget.items():
        budget = load_budget(budget_name)
        minutes = time_limit_minutes(budget, slurm.margin_minutes)
        arrays.append((budget, runs, minutes,
                       executor_parameters(budget, slurm, minutes, f"golf-{state_path.stem}")))
    return arrays


def run_slurm(todo, state_path: Path, results_dir: Path, slurm: SlurmOptions, echo=print, **_) -> list[dict]:
    """One submitit job array per budget; returns at once."""
    from harness.sweep.job import SlurmRun
    from harness.sweep.slurm import executor

    out = []
    for budget, runs, minutes, params in slurm_arrays(todo, state_path, slurm):
        jobs = submit_array(executor(slurm_folder(state_path) / "%j", params),
                            [SlurmRun(str(state_path), r.run_id) for r in runs])
        for r, job in zip(runs, jobs):
            out.append({"run_id": r.run_id, "executor": "slurm", "job_id": str(job.job_id), "submitted_at": now(),
                        "log": job_log(job)})
        echo(f"submitted {len(runs)} runs of budget {budget.name} as SLURM array {jobs[0].job_id.split('_')[0]} "
             f"(time limit {minutes} min, {budget.device_count} task(s) per job)")
    return out


def follow(name: str, results_dir: Path, poll_seconds: float = 10.0, echo=print) -> int:
    """A progress bar until no run is pending or running; then the report. Exit 1 if any run failed."""
    state = load_state(results_dir, name)
    last = ""
    while True:
        states = run_states(state)
        counts = {k: sum(1 for s in states.values() if s["state"] == k)
                  for k in ("done", "running", "pending", "failed", "missing")}
        total = len(states)
        filled = int(30 * counts["done"] / total) if total else 30
        line = (f"[{'#' * filled}{'.' * (30 - filled)}] {counts['done']}/{total} done, {counts['running']} running, "
                f"{counts['pending']} pending, {counts['failed']} failed")
        if sys.stdout.isatty():
            print("\r" + line, end="", flush=True)
        elif line != last:  # a log file gets a line per change, not one per poll
            echo(line)
        last = line
        if counts["running"] + counts["pending"] == 0:
            break
        time.sleep(poll_seconds)
    if sys.stdout.isatty():
        print()
    from harness.report import build_report

    built = build_report(results_dir, Path(results_dir).resolve().parent / "reports" / f"{name}.html", sweep=name)
    echo(f"report: {built.index}")
    return 1 if failures(name, results_dir, echo) else 0
