"""A tuning worker: ask the study for a trial, train it as an ordinary run, tell the result; until the study
has its trials. Any number of workers share one study, each asking as soon as it is free (no batches).

    python -m harness.tune.worker SETTINGS_FILE [WORKER_INDEX]

Asking happens under a lock file next to the settings, after counting finished and running trials, so
workers never start more trials than the study asked for. SIGTERM or SIGUSR2 (scancel, a SLURM time limit)
stops the current run, records it as interrupted, fails its trial as not counted, and ends the worker.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
import types
from pathlib import Path

from harness.errors import UserError
from harness.labels import config_label
from harness.results import write_json_atomic
from harness.tune import space as sp
from harness.tune import study as st


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


class Worker:
    def __init__(self, settings_path: Path, index: int = 0, echo=print):
        from harness.budget import load_budget
        from harness.registry import get_variant

        self.settings = st.load_settings(settings_path)
        self.settings_path, self.index, self.echo = Path(settings_path), index, echo
        self.study = st.open_study(self.settings, index)
        self.variant, _ = get_variant(self.settings.variant)
        self.budget = load_budget(self.settings.budget)
        self.space = sp.from_json(self.settings.space)
        plan = st.split_params(self.settings, {})
        self.base = self.variant.resolve(self.settings.preset, self.budget.model, plan.variant_params,
                                         self.budget.name)
        self.condition_base = self.conditions(plan)

    def conditions(self, plan) -> types.SimpleNamespace:
        """What a conditional dimension reads when its condition is not sampled: the variant's config, the
        techniques' resolved configs, every switch off."""
        from harness import techniques
        from harness.config import as_dict

        fixed_specs, toggled = st.technique_specs(self.settings)
        values = as_dict(self.base)
        for _, config in techniques.resolve([*fixed_specs, *toggled], plan.technique_params):
            values.update(as_dict(config))
        values.update({sp.toggle_name(spec.name): False for spec in toggled})
        return types.SimpleNamespace(**values)

    def next_trial(self):
        """Under the study's lock: conclude trials of dead workers, then ask for one if any are still due."""
        from optuna.storages.journal import JournalFileOpenLock

        lock = JournalFileOpenLock(str(self.settings_path.with_suffix(".ask")))
        lock.acquire()
        try:
            st.fail_stale(self.study, self.settings)
            t = st.tally(self.study)
            if t.counted + t.running >= self.settings.trials:
                return None
            trial = self.study.ask()
            trial.set_user_attr("worker", {**st.worker_identity(), "index": self.index})
            trial.set_user_attr("run_id", f"{self.settings.name}-t{trial.number:04d}")
            return trial
        finally:
            lock.release()

    def run_trial(self, trial) -> str:
        """Train one trial; returns the run's status ("interrupted" ends the worker)."""
        from optuna.distributions import distribution_to_json

        from harness import techniques, train

        s = self.settings
        run_id = trial.user_attrs["run_id"]
        record, reason = None, ""
        with st.Heartbeat(st.heartbeat_file(s, trial.number)):
            try:
                params = sp.suggest(trial, self.space, self.condition_base)
                plan = st.split_params(s, params)
                config = self.variant.resolve(s.preset, self.budget.model, plan.variant_params, self.budget.name)
                applied = techniques.resolve(techniques.parse_with(plan.with_), plan.technique_params)
            except UserError as exc:  # the sampled combination is not a valid model (e.g. heads ∤ width)
                st.conclude(self.study, s, trial.number, None, f"invalid configuration: {exc}")
                self.echo(f"trial {trial.number}: invalid configuration ({exc})")
                return "failed"
            pruning = len(s.objectives) == 1 and s.pruner != "none"

            def on_report(fraction: float, val_bpb: float, step: int) -> bool:
                trial.report(val_bpb, st.report_step(fraction))
                return trial.should_prune()

            info = {"name": s.name, "trial": trial.number, "params": params, "objectives": s.objectives,
                    "distributions": {k: distribution_to_json(v) for k, v in trial.distributions.items()}}
            spec = train.RunSpec(variant=self.variant, config=config, budget=self.budget, preset=s.preset, seed=s.seed,
                                 techniques=applied,
                                 run_id=run_id, results_dir=Path(s.results_dir), max_steps=s.max_steps, quiet=True,
                                 study=info, report_fractions=tuple(s.report_at) if pruning else (),
                                 on_report=on_report if pruning else None,
                                 command=[sys.executable, "-m", "harness.tune.worker", str(self.settings_path)])
            shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
            self.echo(f"trial {trial.number}: training {run_id} ({shown}) …")
            try:
                record = train.run(spec)
            except KeyboardInterrupt:  # stopped before the run's own handler took over (during its setup)
                record = st.read_record(Path(s.results_dir), run_id)
                if record is not None and record.get("status") == "running":
                    record.update(status="interrupted", error="interrupted during setup")
                    write_json_atomic(Path(s.results_dir) / run_id / "run.json", record)
                st.conclude(self.study, s, trial.number, record, "interrupted", lost=record is None)
                raise
            except UserError as exc:  # e.g. a dataset that is not there: nothing ran
                reason = str(exc)
            except Exception as exc:  # a failed run (its record says why) or a plugin that failed to build
                if os.environ.get("HARNESS_DEBUG", "") not in ("", "0"):  # the run's log keeps it regardless
                    traceback.print_exc()
                record = st.read_record(Path(s.results_dir), run_id)
                reason = "" if record else f"{type(exc).__name__}: {exc}"
            state = st.conclude(self.study, s, trial.number, record, reason)
        self.echo(self.line(trial.number, state, record, reason))
        return (record or {}).get("status", "failed")

    def line(self, number: int, state: str, record: dict | None, reason: str) -> str:
        t = st.tally(self.study)
        frozen = self.study.get_trials(deepcopy=False)[number]
        value = (f"val_bpb {record['val_bpb_post_quant']:.4f}" if record and record.get("val_bpb_post_quant")
                 is not None else frozen.user_attrs.get("reason", reason))
        params = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in frozen.params.items())
        label = config_label(record) if record else params  # the label every view of the run uses
        best = st.best_trials(self.study, self.settings)
        best_text = f" | best {best[0].values[0]:.4f} (trial {best[0].number})" if best else ""
        return (f"[{t.counted}/{self.settings.trials}] trial {number} {state.lower()}: {value} | {label}"
                f"{best_text}  {frozen.user_attrs.get('run_id', '')}").rstrip()

    def work(self) -> int:
        """Trials until the study has its count; returns the number this worker ran."""
        ran = 0
        old = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGUSR2)}
        trial = None
        try:
            while True:
                trial = self.next_trial()
                if trial is None:
                    return ran
                status = self.run_trial(trial)
                trial, ran = None, ran + 1
                if status == "interrupted":
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            if trial is not None:  # stopped between asking and training: the trial never ran
                st.conclude(self.study, self.settings, trial.number, None, "interrupted before training", lost=True)
            raise
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)


class SlurmWorker:
    """What submitit pickles for SLURM: one worker (a class, so the job's name says what it runs)."""

    def __init__(self, settings_path: str, index: int):
        self.settings_path, self.index = settings_path, index

    def __call__(self) -> int:
        from harness.sweep.job import slurm_cpu_threads

        slurm_cpu_threads()
        return Worker(Path(self.settings_path), self.index).work()


def main() -> int:
    if len(sys.argv) not in (2, 3):
        print("usage: python -m harness.tune.worker SETTINGS_FILE [WORKER_INDEX]", file=sys.stderr)
        return 2
    try:
        Worker(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) == 3 else 0,
               echo=lambda msg: print(msg, flush=True)).work()
    except KeyboardInterrupt:
        print("worker interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
