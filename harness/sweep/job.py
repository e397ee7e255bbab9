"""One planned run, executed where the executor put it: in this process, a local subprocess or a SLURM task.

    python -m harness.sweep.job STATE_FILE RUN_ID

Everything the run needs is in the sweep's state file, so a SLURM job that is requeued, or a sweep re-run,
executes the same run again. A run whose folder holds a checkpoint resumes from it with only the wallclock it
has left; a run whose previous attempt failed starts afresh, the old attempt kept under
results/.attempts/<run_id>/<n>/ (out of the reports' way, never deleted).

Under SLURM, every task of a multi-GPU job runs this; rank, world size and the rendezvous address come from
the SLURM environment (no torchrun). SIGUSR2 (SLURM's warning before a time limit or preemption) and SIGTERM
(scancel, requeue) stop the run at the next step boundary with a checkpoint; after SIGUSR2 the job requeues
itself, and the requeued job resumes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

RESUMABLE = ("interrupted",)
FINISHED = ("ok", "over_cap", "over_eval_limit", "diverged")


def load_plan(state_file: Path, run_id: str) -> tuple[dict, dict]:
    state = json.loads(Path(state_file).read_text(encoding="utf-8"))
    for plan in state["runs"]:
        if plan["run_id"] == run_id:
            return state, plan
    raise KeyError(f"run {run_id} is not in sweep {state_file}")


def slurm_distributed_env() -> None:
    """torch.distributed's variables from SLURM's, for a job of several tasks (one per GPU)."""
    tasks = int(os.environ.get("SLURM_NTASKS", "1"))
    if tasks < 2 or "RANK" in os.environ:
        return
    nodes = subprocess.run(["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]],
                           capture_output=True, text=True, check=True).stdout.split()
    job = int(os.environ.get("SLURM_ARRAY_JOB_ID", os.environ["SLURM_JOB_ID"]))
    task = int(os.environ.get("SLURM_ARRAY_TASK_ID", "0"))
    os.environ.update(RANK=os.environ["SLURM_PROCID"], WORLD_SIZE=str(tasks), LOCAL_RANK=os.environ["SLURM_LOCALID"],
                      MASTER_ADDR=nodes[0], MASTER_PORT=str(20000 + (job * 131 + task) % 20000))


def slurm_cpu_threads() -> None:
    """Use the CPUs SLURM allocated to this task, not every core of the node: two jobs sharing a node with
    torch's default thread count each run many times slower than either alone."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("SLURM_CPUS_ON_NODE")
    if cpus:
        import torch

        per_node = int(os.environ.get("SLURM_NTASKS_PER_NODE", os.environ.get("SLURM_NTASKS", "1")).split("(")[0])
        share = int(cpus) if "SLURM_CPUS_PER_TASK" in os.environ else int(cpus) // max(per_node, 1)
        torch.set_num_threads(max(1, share))


def previous_status(run_dir: Path) -> str | None:
    from harness.results import read_record

    record = read_record(run_dir)
    return record["status"] if record else None


def set_aside(run_dir: Path) -> None:
    """Move a failed attempt out of results/ proper, keeping every file."""
    attempts = run_dir.parent / ".attempts" / run_dir.name
    attempts.mkdir(parents=True, exist_ok=True)
    shutil.move(str(run_dir), str(attempts / str(len(list(attempts.iterdir())) + 1)))


def execute(state_file: str | Path, run_id: str) -> str:
    """Run (or resume, or skip) one planned run; returns its final status."""
    import dataclasses

    from harness import techniques, train
    from harness.budget import load_budget
    from harness.config import parse_value
    from harness.registry import get_variant
    from harness.sweep.spec import as_flag_text

    state, plan = load_plan(Path(state_file), run_id)
    results_dir = Path(state["results_dir"])
    run_dir = results_dir / run_id
    if os.environ.get("SLURM_JOB_ID"):
        slurm_distributed_env()
        slurm_cpu_threads()
    rank = int(os.environ.get("RANK", "0"))
    status = previous_status(run_dir)
    if status in FINISHED:
        return status
    resume = (run_dir / train.CHECKPOINT_FILE).exists() and status in RESUMABLE
    if run_dir.exists() and not resume and rank == 0:
        set_aside(run_dir)
    budget = load_budget(plan["budget"])
    variant, _ = get_variant(plan["variant"])
    specs = techniques.parse_with(plan.get("with_", ""))
    mine = {f.name: spec.config_cls for spec in specs for f in dataclasses.fields(spec.config_cls)}
    flags = {k: parse_value(variant.config_cls, k, as_flag_text(v)) for k, v in plan["params"].items()
             if k not in mine}
    applied = techniques.resolve(specs, {k: parse_value(mine[k], k, as_flag_text(v))
                                         for k, v in plan["params"].items() if k in mine})
    config = variant.resolve(plan["preset"], budget.model, flags, budget.name)
    spec = train.RunSpec(variant=variant, config=config, budget=budget, preset=plan["preset"], seed=plan["seed"],
                         run_id=run_id, results_dir=results_dir, quiet=True, resume=resume,
                         max_steps=plan.get("max_steps"), techniques=applied,
                         sweep={"name": state["name"], "params": plan["swept"]},
                         command=[sys.executable, "-m", "harness.sweep.job", str(state_file), run_id])
    warned = []

    def stop(signum, frame):
        if signum == signal.SIGUSR2:
            warned.append(True)
        train.request_checkpoint()

    if os.environ.get("SLURM_JOB_ID"):
        signal.signal(signal.SIGUSR2, stop)
        signal.signal(signal.SIGTERM, stop)
    record = train.run(spec)
    if warned and record["status"] == "interrupted" and rank == 0:
        job = os.environ.get("SLURM_ARRAY_JOB_ID")
        job = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if job else os.environ["SLURM_JOB_ID"]
        subprocess.run(["scontrol", "requeue", job], check=False)
    return record["status"]


class SlurmRun:
    """What submitit pickles for SLURM: a call to `execute` (a class, so the job's name says what it runs)."""

    def __init__(self, state_file: str, run_id: str):
        self.state_file, self.run_id = state_file, run_id

    def __call__(self) -> str:
        return execute(self.state_file, self.run_id)


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: python -m harness.sweep.job STATE_FILE RUN_ID", file=sys.stderr)
        return 2
    from harness.errors import UserError

    try:
        status = execute(sys.argv[1], sys.argv[2])
    except UserError as exc:  # refused before it ran (a dataset gone missing since planning): one line
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0 if status in FINISHED else 1


if __name__ == "__main__":
    sys.exit(main())
