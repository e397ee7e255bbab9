"""A tuning study: its settings file, its Optuna storage, sampler and pruner, and run records → trial results.

The settings (results/studies/NAME.json) hold everything a worker needs and are written only by the `tune`
command. Optuna's storage holds the trials: an SQLite file under results/studies/ by default, Optuna's journal
file where workers share a network filesystem (SQLite's locking is unsafe there), or any database URL. A
trial's outcome is read from its run record, so a trial whose worker died after the run finished still counts
with its real numbers, and one whose worker died mid-run is failed with that reason and not counted.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.checks import SAFE_NAME, read_json
from harness.errors import UserError
from harness.results import write_json_atomic

# objective name → (record field, direction)
OBJECTIVES = {"val_bpb": ("val_bpb_post_quant", "minimize"),
              "artifact_bytes": ("artifact_total_bytes", "minimize"),
              "tokens_per_second": ("tokens_per_second", "maximize")}
SCORED = ("ok", "over_cap", "over_eval_limit")
HEARTBEAT_SECONDS = 10.0


@dataclass
class Settings:
    name: str
    variant: str                    # registered name or plugin path
    preset: str | None
    budget: str                     # budget name or absolute path
    fixed: dict[str, Any]           # parameters fixed on the command line
    space: dict[str, dict]          # space.to_json of the resolved space
    objectives: list[str]
    trials: int
    pruner: str
    report_at: list[float]          # fractions of the budget at which trials report val_bpb
    storage: str                    # "sqlite:///…", "journal:/…/NAME.journal" or a database URL
    results_dir: str
    seed: int = 1337
    sampler_seed: int | None = None
    max_steps: int | None = None
    heartbeat_grace_seconds: float = 120.0
    command: list[str] = field(default_factory=list)
    submissions: list[dict] = field(default_factory=list)
    with_: str = ""                 # techniques every trial trains with (--with)
    search_with: list[str] = field(default_factory=list)  # techniques each trial turns on or off (--search-with)

    # What makes two invocations the same study; the trial count may grow, the rest may not change.
    IDENTITY = ("variant", "preset", "budget", "fixed", "space", "objectives", "pruner", "report_at", "seed",
                "max_steps", "storage", "with_", "search_with")

    @property
    def directions(self) -> list[str]:
        return [OBJECTIVES[o][1] for o in self.objectives]

    @property
    def folder(self) -> Path:
        return Path(self.results_dir) / "studies" / self.name

    def to_dict(self) -> dict:
        return asdict(self)


def settings_file(results_dir: Path, name: str) -> Path:
    return Path(results_dir) / "studies" / f"{name}.json"


SETTINGS_TYPES = {"name": str, "variant": str, "budget": str, "fixed": dict, "space": dict, "objectives": list,
                  "trials": int, "pruner": str, "report_at": list, "storage": str, "results_dir": str, "seed": int,
                  "heartbeat_grace_seconds": (int, float), "command": list, "submissions": list, "with_": str,
                  "search_with": list}


def load_settings(path: Path) -> Settings:
    """A study's settings file, checked: a damaged one is named, with how to start over."""
    fix = "move it aside and run tune again (with --name to start a new study)"
    data = read_json(path, "study settings", fix)
    missing = sorted(f for f in ("name", "variant", "preset", "budget", "fixed", "space", "objectives", "trials",
                                 "pruner", "report_at", "storage", "results_dir") if f not in data)
    unknown = sorted(set(data) - set(Settings.__dataclass_fields__))
    wrong = [k for k, kind in SETTINGS_TYPES.items() if k in data and (
        not isinstance(data[k], kind) or isinstance(data[k], bool))]
    problem = (f"{missing[0]!r} is missing" if missing else f"unknown field {unknown[0]!r}" if unknown else
               f"{wrong[0]!r} has the wrong type ({data[wrong[0]]!r:.40})" if wrong else None)
    if problem is None and not all(isinstance(o, str) and o in OBJECTIVES for o in data["objectives"]):
        problem = f"objectives {data['objectives']!r:.60} are not {', '.join(OBJECTIVES)}"
    if problem is None and not SAFE_NAME.fullmatch(data["name"]):
        problem = f"name {data['name']!r:.60} cannot name a file"
    if problem:
        raise UserError(f"study settings {path} are damaged ({problem}); {fix}")
    return Settings(**data)


def save_settings(settings: Settings) -> Path:
    path = settings_file(Path(settings.results_dir), settings.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, settings.to_dict())
    return path


def parse_objectives(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown or not names:
        raise UserError(f"--objectives {text!r}: choose from {', '.join(OBJECTIVES)} (comma-separated)")
    if names[0] != "val_bpb" or len(set(names)) != len(names):
        raise UserError(f"--objectives {text!r}: start with val_bpb and name each objective once, "
                        f"e.g. val_bpb,artifact_bytes")
    return names


def storage_url(text: str | None, results_dir: Path, name: str, executor: str) -> str:
    """--storage → one canonical string. Default: SQLite here, the journal file for SLURM workers."""
    studies = (Path(results_dir) / "studies").resolve()
    if text is None:
        text = "journal" if executor == "slurm" else "sqlite"
    if text == "sqlite":
        return f"sqlite:///{studies / (name + '.db')}"
    if text == "journal":
        return f"journal:{studies / (name + '.journal')}"
    if "://" in text:
        return text
    path = Path(text).resolve()
    if path.suffix in (".db", ".sqlite", ".sqlite3"):
        return f"sqlite:///{path}"
    if path.suffix in (".journal", ".log"):
        return f"journal:{path}"
    raise UserError(f"--storage {text!r}: give sqlite, journal, a .db or .journal file, or a database URL "
                    f"such as postgresql://user@host/db")


def open_storage(url: str):
    import optuna

    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        path = url.removeprefix("journal:")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # The open(O_EXCL) lock works on NFS, where the default symlink lock may not.
        return optuna.storages.JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}}
                                          if url.startswith("sqlite") else None)
    except Exception as exc:  # a wrong URL, an unreachable server, a missing driver
        raise UserError(f"cannot open the study storage {url}: {str(exc).splitlines()[0]}") from None


CONSTRAINTS = ("artifact_bytes_over_cap", "eval_seconds_over_limit")  # ≤ 0 is feasible


def constraints(trial) -> list[float]:
    return list(trial.user_attrs.get("constraints", [0.0] * len(CONSTRAINTS)))


def make_sampler(settings: Settings, worker: int):
    import optuna

    seed = None if settings.sampler_seed is None else settings.sampler_seed + worker  # workers must not agree
    if len(settings.objectives) == 1:
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(4, min(10, settings.trials // 3)))
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(8, min(50, settings.trials // 4)))


def make_pruner(settings: Settings):
    import optuna

    if settings.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=0)
    if settings.pruner == "hyperband":
        first = min(report_step(f) for f in settings.report_at)
        return optuna.pruners.HyperbandPruner(min_resource=first, max_resource=100, reduction_factor=3)
    return optuna.pruners.NopPruner()


def report_step(fraction: float) -> int:
    """Pruners compare trials at the same step: the percentage of the budget spent."""
    return round(100 * fraction)


def open_study(settings: Settings, worker: int = 0):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(study_name=settings.name, storage=open_storage(settings.storage),
                               sampler=make_sampler(settings, worker), pruner=make_pruner(settings),
                               directions=settings.directions, load_if_exists=True)


# ---------------------------------------------------------------------------------------------- outcomes

def handle(study, number: int):
    """A live handle on trial `number` of `study`, whoever asked for it."""
    import optuna

    frozen = study.get_trials(deepcopy=False)[number]
    return optuna.trial.Trial(study, frozen._trial_id)


def read_record(results_dir: Path, run_id: str | None) -> dict | None:
    """A trial's run record (None if it has none, or a damaged one: warned about, never trusted)."""
    from harness import results

    return results.read_record(Path(results_dir) / run_id) if run_id else None


def conclude(study, settings: Settings, number: int, record: dict | None, reason: str = "",
             lost: bool = False) -> str:
    """Tell Optuna how trial `number` ended, from its run record. `lost`: its worker died mid-run, so the
    trial is failed but not counted (it never had its chance). Returns the trial's final state name."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    status = "lost" if lost else (record or {}).get("status", "failed")
    attrs: dict[str, Any] = {"status": status, "counts": status not in ("lost", "interrupted")}
    for key in ("artifact_total_bytes", "tokens_per_second", "val_bpb", "steps", "train_seconds"):
        if record and record.get(key) is not None:
            attrs[key] = record[key]
    values, state = None, TrialState.FAIL
    if status in SCORED:
        values = [record.get(OBJECTIVES[o][0]) for o in settings.objectives]
        if all(isinstance(v, int | float) and math.isfinite(v) for v in values):
            state = TrialState.COMPLETE
            eval_limit = record.get("budget", {}).get("eval_seconds_limit", math.inf)
            attrs["constraints"] = [float(record["artifact_total_bytes"] - record["artifact_cap_bytes"]),
                                    float(record.get("eval_seconds", 0.0) - eval_limit)]
        else:
            values, reason = None, reason or f"objective not finite: {values}"
    elif status == "pruned":
        state = TrialState.PRUNED
        at = record["pruned_at"]
        reason = reason or f"pruned at the {at['fraction']:.0%} report (step {at['step']}, val_bpb {at['val_bpb']:.4f})"
    elif status == "diverged":
        reason = reason or f"diverged at step {record.get('diverged_step')}"
    elif status == "lost":
        reason = reason or "worker lost: killed, out of time, or stopped sending heartbeats"
    else:
        reason = reason or str((record or {}).get("error") or status)
    attrs["reason"] = reason
    try:
        trial = handle(study, number)
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        for key, value in zip(CONSTRAINTS, attrs.get("constraints", ())):  # the samplers steer away from these
            trial.set_constraint(key, value)
        study.tell(number, values, state=state)
    except UpdateFinishedTrialError:  # another worker concluded it first
        pass
    return state.name


@dataclass
class Tally:
    counted: int = 0       # trials that had their chance: complete, pruned, or failed on their own
    running: int = 0
    complete: int = 0
    pruned: int = 0
    failed: int = 0        # failed on their own (error, divergence, NaN, invalid configuration)
    lost: int = 0          # stopped from outside (killed or interrupted worker): not counted


def tally(study) -> Tally:
    from optuna.trial import TrialState

    t = Tally()
    for trial in study.get_trials(deepcopy=False):
        if trial.state == TrialState.RUNNING:  # (WAITING trials are enqueued ones the next ask serves)
            t.running += 1
        elif trial.state == TrialState.WAITING:
            continue
        elif trial.state == TrialState.COMPLETE:
            t.complete += 1
        elif trial.state == TrialState.PRUNED:
            t.pruned += 1
        elif trial.user_attrs.get("counts", True):
            t.failed += 1
        else:
            t.lost += 1
    t.counted = t.complete + t.pruned + t.failed
    return t


# ---------------------------------------------------------------------------------------------- liveness

def worker_identity() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job": os.environ.get("SLURM_JOB_ID")}


def heartbeat_file(settings: Settings, number: int) -> Path:
    return settings.folder / "heartbeats" / f"trial-{number:04d}"


class Heartbeat:
    """Touches the trial's heartbeat file every few seconds while the trial runs (a daemon thread)."""

    def __init__(self, path: Path):
        self.path, self.done = path, threading.Event()
        path.parent.mkdir(parents=True, exist_ok=True)

    def beat(self) -> None:
        while not self.done.wait(HEARTBEAT_SECONDS):
            self.path.touch()

    def __enter__(self) -> Heartbeat:
        self.path.touch()
        threading.Thread(target=self.beat, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.path.unlink(missing_ok=True)


def is_alive(settings: Settings, trial) -> bool:
    """A running trial's worker is alive if its process exists (same host) and its heartbeat is fresh."""
    worker = trial.user_attrs.get("worker")
    if worker and worker.get("host") == socket.gethostname():
        try:
            os.kill(int(worker["pid"]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
    try:
        last = heartbeat_file(settings, trial.number).stat().st_mtime
    except OSError:  # no heartbeat yet: the worker is between asking and starting the run
        last = trial.datetime_start.timestamp() if trial.datetime_start else time.time()
    return time.time() - last < settings.heartbeat_grace_seconds


def fail_stale(study, settings: Settings) -> list[int]:
    """Conclude running trials whose worker is gone: from the run record if it finished, else as lost."""
    from optuna.trial import TrialState

    ended = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if is_alive(settings, trial):
            continue
        run_id = trial.user_attrs.get("run_id")
        record = read_record(Path(settings.results_dir), run_id)
        if record is None or record.get("status") == "running":
            if record is not None:  # its writer is dead: the record says how the run ended
                record.update(status="failed", error="worker lost: its process ended or stopped sending heartbeats")
                write_json_atomic(Path(settings.results_dir) / run_id / "run.json", record)
            conclude(study, settings, trial.number, None, lost=True)
        else:  # the run finished before its worker died: its numbers stand
            conclude(study, settings, trial.number, record)
        ended.append(trial.number)
    return ended


# ---------------------------------------------------------------------------------------------- winners

def feasible_trials(study) -> list:
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if all(c <= 0 for c in constraints(t))]


def dominates(a: list[float], b: list[float], directions: list[str]) -> bool:
    signed = [(x, y) if d == "minimize" else (-x, -y) for x, y, d in zip(a, b, directions)]
    return all(x <= y for x, y in signed) and any(x < y for x, y in signed)


def best_trials(study, settings: Settings) -> list:
    """Single objective: feasible trials, best first. Several: the feasible Pareto front, by val_bpb."""
    trials = sorted(feasible_trials(study), key=lambda t: t.values[0])
    if len(settings.objectives) == 1:
        return trials
    return [t for t in trials if not any(dominates(o.values, t.values, settings.directions) for o in trials)]


def importances(records: list[dict]) -> dict[str, float]:
    """fANOVA importance of each searched parameter for post-quant val_bpb, from the trials' run records
    (the report reads records, not the study's storage). Empty when there is too little to say."""
    import optuna
    from optuna.distributions import json_to_distribution

    scored = [r for r in records if r.get("status") in SCORED and r.get("val_bpb_post_quant") is not None
              and math.isfinite(r["val_bpb_post_quant"])]
    if len(scored) < 3:
        return {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize")
    for r in scored:
        info = r["study"]
        dists = {k: json_to_distribution(v) for k, v in info.get("distributions", {}).items()}
        study.add_trial(optuna.trial.create_trial(params={k: info["params"][k] for k in dists}, distributions=dists,
                                                  value=r["val_bpb_post_quant"]))
    try:
        return optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):  # e.g. every trial had the same parameters
        return {}


@dataclass
class TrialPlan:
    """A trial's parameters split: the variant's, the techniques' and which techniques are on."""
    variant_params: dict[str, Any]
    technique_params: dict[str, Any]
    with_: str  # as --with takes it ("" none)


def technique_specs(settings: Settings) -> tuple[list, list]:
    from harness.techniques import parse_with

    return parse_with(settings.with_), parse_with(",".join(settings.search_with))


def split_params(settings: Settings, params: dict[str, Any]) -> TrialPlan:
    """The study's fixed flags plus a trial's sampled values (or any subset: params may be {}), split."""
    import dataclasses as dc

    from harness.tune.space import toggle_name

    fixed_specs, toggled = technique_specs(settings)
    owned = {f.name for spec in (*fixed_specs, *toggled) for f in dc.fields(spec.config_cls)}
    merged = {**settings.fixed, **params}
    on = [spec.name for spec in fixed_specs] + [spec.name for spec in toggled if merged.get(toggle_name(spec.name))]
    switches = {toggle_name(spec.name) for spec in toggled}
    return TrialPlan({k: v for k, v in merged.items() if k not in owned and k not in switches},
                     {k: v for k, v in merged.items() if k in owned}, ",".join(on))
