"""`python -m harness tune`: settings → workers (this machine or SLURM) → the study's outcome.

Re-running the same command resumes the study: trials of workers that died are concluded from their run
records (or failed as lost), and only the trials still missing are run. When the study has its trials the
best configuration(s) — optionally re-run over more seeds first — are written as a preset file for
`run --preset-file`, and the report is built.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from harness.checks import safe_name
from harness.errors import UserError
from harness.tune import space as sp
from harness.tune import study as st


def plan_study(args, fixed: dict, variant, preset: str | None, budget, results_dir: Path) -> st.Settings:
    """The study's settings from the command line, checked; an existing study must match them."""
    from harness.sweep.spec import variant_ref

    if budget.device_count != 1:
        raise UserError(f"budget {budget.name} trains on {budget.device_count} devices; tune runs each trial on one "
                        f"device, so tune under a one-device budget (e.g. 10min) and confirm the winner with sweep")
    objectives = st.parse_objectives(args.objectives)
    pruner = args.pruner or ("median" if len(objectives) == 1 else "none")
    if len(objectives) > 1 and pruner != "none":
        raise UserError(f"--pruner {pruner} works with one objective; Optuna cannot prune multi-objective trials "
                        f"(drop --pruner, or tune val_bpb alone)")
    try:
        report_at = sorted({float(x) for x in args.report_at.split(",") if x.strip()})
    except ValueError:
        raise UserError(f"--report-at {args.report_at!r}: give fractions of the budget, e.g. 0.25,0.5,0.75") from None
    if not report_at or not all(0 < f < 1 for f in report_at):
        raise UserError(f"--report-at {args.report_at!r}: every fraction must lie strictly between 0 and 1")
    if args.trials < 1 or args.workers < 1:
        raise UserError("--trials and --workers must be at least 1")
    only = [n.strip().replace("-", "_") for n in args.only.split(",") if n.strip()] if args.only else None
    fixed_specs, toggled = technique_choice(args)
    space = sp.resolve_space(variant.space, variant.config_cls, args.search, only, fixed, (fixed_specs, toggled))
    name = args.name or f"{variant.name}-{Path(budget.name).stem}" + (
        "-" + "-".join(o.replace("_", "") for o in objectives[1:]) if len(objectives) > 1 else "")
    safe_name(name, "study name")
    budget_ref = str(Path(args.budget).resolve()) if args.budget.endswith(".toml") else args.budget
    settings = st.Settings(
        name=name, variant=variant_ref(variant), preset=preset, budget=budget_ref, fixed=fixed,
        space=sp.to_json(space), objectives=objectives, trials=args.trials, pruner=pruner, report_at=report_at,
        storage=st.storage_url(args.storage, results_dir, name, args.executor),
        results_dir=str(Path(results_dir).resolve()), seed=args.seed, sampler_seed=args.sampler_seed,
        max_steps=args.max_steps, heartbeat_grace_seconds=args.heartbeat_grace, command=list(sys.argv),
        with_=",".join(s.name for s in fixed_specs), search_with=[s.name for s in toggled])
    path = st.settings_file(results_dir, name)
    if path.exists():
        old = st.load_settings(path)
        if args.storage is None:  # resuming without --storage: keep the storage the study was started with
            settings.storage = old.storage
        for key in st.Settings.IDENTITY:
            if getattr(old, key) != getattr(settings, key):
                raise UserError(f"study {name!r} already exists with another {key} ({getattr(old, key)!r}, now "
                                f"{getattr(settings, key)!r}); re-run it as it was, or name a new one with --name")
        settings.submissions = old.submissions
    if args.executor == "slurm" and settings.storage.startswith("sqlite"):
        print("warning: SQLite storage with SLURM workers is safe only if they share a local disk; on a network "
              "filesystem use --storage journal (the default for --executor slurm)", file=sys.stderr)
    return settings


def technique_choice(args) -> tuple[list, list]:
    """(techniques every trial uses, techniques each trial turns on or off) from --with and --search-with."""
    from harness import techniques

    fixed_specs = techniques.parse_with(getattr(args, "with_", None))
    toggled = techniques.parse_with(getattr(args, "search_with", None))
    both = sorted({s.name for s in fixed_specs} & {s.name for s in toggled})
    if both:
        raise UserError(f"technique {both[0]} is in both --with (every trial) and --search-with (on or off per trial);"
                        f" keep one")
    techniques.parse_with(",".join(s.name for s in (*fixed_specs, *toggled)))  # an incompatible pair is refused
    return fixed_specs, toggled


def describe(settings: st.Settings, tally: st.Tally) -> str:
    sampler = "TPE" if len(settings.objectives) == 1 else "NSGA-II"
    pruning = ("no pruning" if settings.pruner == "none" else
               f"{settings.pruner} pruning at {', '.join(f'{f:.0%}' for f in settings.report_at)}")
    lines = [f"study {settings.name}: {settings.variant} under {Path(settings.budget).stem}, "
             f"{' + '.join(settings.objectives)} ({sampler}, {pruning}), {settings.trials} trials "
             f"({tally.counted} done, {tally.running} running); storage {settings.storage}"]
    if settings.with_:
        lines += [f"  with   {settings.with_} (every trial)"]
    lines += [f"  search {line}" for line in sp.describe(sp.from_json(settings.space))]
    lines += [f"  fixed  {k} = {v}" for k, v in settings.fixed.items()]
    return "\n".join(lines)


def is_done(settings: st.Settings) -> bool:
    study = st.open_study(settings)
    st.fail_stale(study, settings)
    t = st.tally(study)
    return t.counted >= settings.trials and t.running == 0


def study_status(settings: st.Settings) -> str:
    """`status NAME` for a study: the count, then a line per trial with its state, score or reason, and run."""
    study = st.open_study(settings)
    st.fail_stale(study, settings)
    from harness.labels import config_label
    from harness.views import progress_text

    lines = [describe(settings, st.tally(study))]
    for t in study.get_trials(deepcopy=False):
        record = st.read_record(Path(settings.results_dir), t.user_attrs.get("run_id"))
        score = (f"val_bpb {t.values[0]:.4f}" if t.state.name == "COMPLETE" else
                 t.user_attrs.get("reason", "") if t.state.name != "RUNNING" else progress_text(record))
        label = config_label(record) if record else ""
        lines.append(f"  trial {t.number:<4} {t.state.name.lower():<9} {score:<40} {label}  "
                     f"{t.user_attrs.get('run_id', '')}".rstrip())
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- executors

def run_local(path: Path, settings: st.Settings, workers: int, echo=print) -> None:
    """Workers on this machine, sharing its cores; a round that ends short (a worker died) is followed by
    another that runs what is missing."""
    from harness.tune.worker import Worker

    for _ in range(3):
        study = st.open_study(settings)
        st.fail_stale(study, settings)
        if st.tally(study).counted >= settings.trials:
            return
        if workers == 1:
            echo(f"tune: running trials in this process ({st.tally(study).counted} of {settings.trials} done) …")
            Worker(path, 0, echo).work()
            continue
        from harness.hardware import visible_gpus, worker_env

        threads = str(max(1, (os.cpu_count() or 1) // workers))
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        gpus = visible_gpus()  # one GPU per worker where there are enough, instead of all on cuda:0
        echo(f"tune: starting {workers} worker processes, {threads} CPU threads each …")
        procs = [subprocess.Popen([sys.executable, "-m", "harness.tune.worker", str(path), str(i)],
                                  env={**env, **worker_env(i, gpus)}) for i in range(workers)]
        try:
            for p in procs:
                p.wait()
        except KeyboardInterrupt:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait()
            raise


def live_jobs(settings: st.Settings) -> list[str]:
    from harness.sweep import ACTIVE_SLURM, slurm_states

    states = slurm_states([s["job_id"] for s in settings.submissions])
    return [job for job, state in states.items() if state in ACTIVE_SLURM]


def run_slurm(path: Path, settings: st.Settings, workers: int, slurm, time_minutes: int | None, echo=print) -> None:
    """Submit enough worker jobs (one array) to have `workers` in flight, no more than trials still missing."""
    from harness.sweep import job_log, now, submit_array
    from harness.sweep.slurm import executor as slurm_executor
    from harness.tune.worker import SlurmWorker

    study = st.open_study(settings)
    st.fail_stale(study, settings)
    t = st.tally(study)
    live = live_jobs(settings)
    need = min(workers - len(live), settings.trials - t.counted - t.running)
    if need <= 0:
        echo(f"{len(live)} worker job(s) in flight; none to add")
        return
    per_worker, minutes, params = worker_jobs(settings, need, settings.trials - t.counted, slurm, time_minutes)
    executor = slurm_executor(settings.folder / "slurm" / "%j", params)
    first = len(settings.submissions)
    jobs = submit_array(executor, [SlurmWorker(str(path), first + i) for i in range(need)])
    settings.submissions += [{"job_id": str(j.job_id), "index": first + i, "log": job_log(j), "submitted_at": now()}
                             for i, j in enumerate(jobs)]
    st.save_settings(settings)
    echo(f"submitted {need} worker(s) as SLURM array {jobs[0].job_id.split('_')[0]} (time limit {minutes} min, "
         f"about {per_worker} trial(s) each); logs in {settings.folder / 'slurm'}")


def worker_jobs(settings: st.Settings, jobs: int, trials_left: int, slurm, time_minutes: int | None) -> tuple:
    """(trials per worker, time limit in minutes, submitit's parameters) for `jobs` worker jobs."""
    from harness.budget import load_budget
    from harness.sweep import time_limit_minutes
    from harness.sweep.slurm import executor_parameters

    budget = load_budget(settings.budget)
    per_worker = math.ceil(trials_left / jobs)
    minutes = time_minutes or per_worker * time_limit_minutes(budget, 0) + math.ceil(slurm.margin_minutes)
    return per_worker, minutes, executor_parameters(budget, slurm, minutes, f"golf-tune-{settings.name}")


def sbatch_preview(settings: st.Settings, workers: int, slurm, time_minutes: int | None) -> str:
    """The sbatch script of the worker jobs a new study would submit, as submitit would write it."""
    from harness.sweep.slurm import sbatch_script

    jobs = min(workers, settings.trials)
    per_worker, minutes, params = worker_jobs(settings, jobs, settings.trials, slurm, time_minutes)
    return (f"\nsbatch script for {jobs} worker job(s) (about {per_worker} trial(s) each, time limit {minutes} "
            f"min), as submitit would submit it{' (one job array)' if jobs > 1 else ''}:\n"
            + sbatch_script(settings.folder / "slurm" / "%j", params, jobs).rstrip())


def follow(path: Path, settings: st.Settings, workers: int, slurm, time_minutes: int | None,
           poll_seconds: float = 10.0, echo=print) -> None:
    """Progress until the study has its trials; if every worker job ended early, submit more (twice at most)."""
    study = st.open_study(settings)
    last, resubmitted = "", 0
    while True:
        st.fail_stale(study, settings)
        t = st.tally(study)
        line = (f"{t.counted}/{settings.trials} trials: {t.complete} complete, {t.pruned} pruned, {t.failed} failed, "
                f"{t.running} running" + (f", {t.lost} lost" if t.lost else ""))
        if line != last:
            echo(line)
            last = line
        if t.counted >= settings.trials and t.running == 0:
            return
        if not live_jobs(settings) and t.running == 0:
            if resubmitted == 2:
                echo("worker jobs keep ending before the study is done; see their logs in "
                     f"{settings.folder / 'slurm'}")
                return
            run_slurm(path, settings, workers, slurm, time_minutes, echo)
            resubmitted += 1
        time.sleep(poll_seconds)


# ---------------------------------------------------------------------------------------------- outcome

def reevaluate(settings: st.Settings, candidates: list, seeds: int, executor: str, workers: int, slurm,
               echo=print) -> dict[int, list[dict]]:
    """Each candidate trial's configuration again under seeds+1 … (its own run is the first seed), as a sweep;
    returns trial number → the scored records of every seed."""
    from harness import sweep as sw
    from harness.sweep.spec import Sweep, expand

    extra = [settings.seed + i for i in range(1, seeds)]
    plan = Sweep(name=f"{settings.name}-reeval", source=f"study {settings.name}")
    ids: dict[int, list[str]] = {}
    for trial in candidates:
        plan_of = st.split_params(settings, trial.params)
        entry = {"variant": settings.variant, "params": {**plan_of.variant_params, **plan_of.technique_params},
                 "with": [plan_of.with_]}
        if settings.preset:
            entry["preset"] = settings.preset
        runs = expand(plan.name, [entry], settings.budget, extra, plan.source, settings.max_steps).runs
        ids[trial.number] = [r.run_id for r in runs]
        plan.runs += [r for r in runs if r.run_id not in {p.run_id for p in plan.runs}]
    results_dir = Path(settings.results_dir)
    echo(f"re-evaluating the top {len(candidates)} over {seeds} seeds ({len(plan.runs)} more runs)")
    reused = sw.submit(plan, results_dir, "local" if executor == "local" else "slurm", workers, slurm,
                       echo=echo).get("reused", {})
    if executor == "slurm":
        sw.follow(plan.name, results_dir, echo=echo)
    out = {}
    for trial in candidates:
        runs = [trial.user_attrs["run_id"], *(reused.get(r, r) for r in ids[trial.number])]
        records = [st.read_record(results_dir, r) for r in runs]
        out[trial.number] = [r for r in records if r and r.get("status") in st.SCORED]
    return out


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def write_presets(settings: st.Settings, chosen: list[tuple[str, object, str]]) -> Path:
    """results/studies/NAME.presets.toml: a [presets.NAME] table per chosen trial, for `run --preset-file`."""
    path = Path(settings.results_dir) / "studies" / f"{settings.name}.presets.toml"
    budget = settings.budget
    from harness.registry import get_variant

    variant, _ = get_variant(settings.variant)
    base = variant.all_presets().get(settings.preset, {}) if settings.preset else {}  # a preset holds all it needs
    lines = [f"# Study {settings.name}: {settings.variant} under {budget}, "
             f"objectives {', '.join(settings.objectives)}.",
             f"# Use: {rerun_command(settings, path)} --preset {chosen[0][0]}{with_flags(settings, chosen[0][1])}",
             f"study = {toml_value(settings.name)}", f"variant = {toml_value(settings.variant)}",
             f"budget = {toml_value(settings.budget)}"]
    for name, trial, comment in chosen:
        plan = st.split_params(settings, trial.params)
        lines += ["", f"[presets.{name}]  # {comment}"]
        if plan.with_:  # a preset holds the variant's parameters; the techniques go on the command line
            lines += [f"# trained with:{with_flags(settings, trial)}"]
        lines += [f"{k} = {toml_value(v)}" for k, v in {**base, **plan.variant_params}.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def with_flags(settings: st.Settings, trial) -> str:
    """' --with mtp --mtp-heads 3' for a trial's techniques ('' without)."""
    plan = st.split_params(settings, trial.params)
    if not plan.with_:
        return ""
    return f" --with {plan.with_}" + "".join(f" --{k.replace('_', '-')} {v}" for k, v in plan.technique_params.items())


def rerun_command(settings: st.Settings, path: Path) -> str:
    """`run` for a preset of this study, with every departure from the budget the trials ran under."""
    overrides = f" --max-steps {settings.max_steps}" if settings.max_steps is not None else ""
    return (f"python -m harness run --variant {Path(settings.variant).stem} --budget {settings.budget} "
            f"--preset-file {path}{overrides}")


def trial_summary(trial, settings: st.Settings) -> str:
    values = ", ".join(f"{o} {v:,.4f}" if o == "val_bpb" else f"{o} {v:,.0f}"
                       for o, v in zip(settings.objectives, trial.values))
    return f"trial {trial.number} (run {trial.user_attrs.get('run_id')}): {values}"


def failed_trials(study, settings: st.Settings) -> list[str]:
    """A line per trial that failed (an error, not a divergence: a diverged trial is an outcome of its
    configuration, as in a sweep): why, and where its run's log is."""
    from optuna.trial import TrialState

    lines = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if t.user_attrs.get("status") in ("diverged", "lost", "interrupted"):  # outcomes, or retried
            continue
        run_id = t.user_attrs.get("run_id")
        log = Path(settings.results_dir) / run_id / "log.txt" if run_id else None
        where = f" (log: {log})" if log and log.exists() else ""
        lines.append(f"  trial {t.number} failed: {t.user_attrs.get('reason') or 'no reason recorded'}{where}")
    return ([f"{len(lines)} trial(s) failed:"] + lines) if lines else []


def finish(settings: st.Settings, reeval_top: int, reeval_seeds: int, executor: str, workers: int, slurm,
           echo=print) -> int:
    """Summary, optional re-evaluation, the preset file and the report. Exit 1 if the study is short."""
    from harness.report import build_report

    study = st.open_study(settings)
    st.fail_stale(study, settings)
    t = st.tally(study)
    echo(f"study {settings.name}: {t.counted}/{settings.trials} trials — {t.complete} complete, {t.pruned} pruned, "
         f"{t.failed} failed" + (f"; {t.lost} lost to stopped workers (not counted)" if t.lost else ""))
    failed = failed_trials(study, settings)
    for line in failed:
        echo(line)
    best = st.best_trials(study, settings)
    infeasible = t.complete - len(st.feasible_trials(study))
    if infeasible:
        echo(f"{infeasible} complete trial(s) broke a constraint (artifact over the cap or eval over its limit) "
             f"and cannot win")
    if not best:
        echo("no trial finished within the constraints; no preset written")
        return 1
    heading = "best trials" if len(settings.objectives) == 1 else "Pareto front (feasible, by val_bpb)"
    echo(f"{heading}:")
    for trial in best[:10]:
        echo(f"  {trial_summary(trial, settings)} | " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else
                                                             f"{k}={v}" for k, v in trial.params.items()))
    if len(settings.objectives) == 1:
        chosen = [("best", best[0], trial_summary(best[0], settings))]
    else:
        chosen = [("best", best[0], trial_summary(best[0], settings))] + [
            (f"pareto-{i}", trial, trial_summary(trial, settings)) for i, trial in enumerate(best, 1)]
    if reeval_top > 0 and reeval_seeds > 1:
        scores = reevaluate(settings, best[:reeval_top], reeval_seeds, executor, workers, slurm, echo)
        ranked = []
        for trial in best[:reeval_top]:
            values = [r["val_bpb_post_quant"] for r in scores[trial.number]
                      if r["artifact_total_bytes"] <= r["artifact_cap_bytes"]]
            if values:
                mean = sum(values) / len(values)
                std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
                ranked.append((mean, std, len(values), trial))
        ranked.sort(key=lambda x: x[0])
        for mean, std, n, trial in ranked:
            echo(f"  trial {trial.number}: val_bpb {mean:.4f} ± {std:.4f} over {n} seeds")
        if ranked:
            mean, std, n, trial = ranked[0]
            chosen[0] = ("best", trial, f"trial {trial.number}: val_bpb {mean:.4f} ± {std:.4f} over {n} seeds "
                                        f"(re-evaluated; run {trial.user_attrs.get('run_id')} and seeds after it)")
    path = write_presets(settings, chosen)
    echo(f"best configuration: {chosen[0][2]}")
    echo(f"presets: {path} ({rerun_command(settings, path)} --preset {chosen[0][0]}"
         f"{with_flags(settings, chosen[0][1])})")
    results_dir = Path(settings.results_dir)
    built = build_report(results_dir, results_dir.parent / "reports" / f"{settings.name}.html",
                         study=settings.name)
    echo(f"report: {built.index}")
    return 0 if t.counted >= settings.trials and not failed else 1
