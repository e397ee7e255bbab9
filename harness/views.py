"""Terminal views of runs: the `results` table, `status` of one run, and `watch`'s live progress bars.

Records → one row per run (its label, status, score, the difference from the plain baseline beside it, flags)
→ text fitted to the terminal's width, one line per run, or JSON / CSV with every value whole.
"""

from __future__ import annotations

import calendar
import csv
import io
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UserError
from harness.labels import config_label, differing, techniques
from harness.results import STATUSES, iter_records, read_record

STALE_SECONDS = 120  # a running record not refreshed for this long: its process may be gone
FAILED = ("diverged", "failed", "interrupted")
ENDED = tuple(s for s in STATUSES if s != "running")


# ---------------------------------------------------------------------------------------------- one row per run

def age_seconds(record: dict, run_dir: Path | None, now: float | None = None) -> float | None:
    """Seconds since a running record was last refreshed: its live.updated_at, else its file's time."""
    now = time.time() if now is None else now
    stamp = (record.get("live") or {}).get("updated_at") if isinstance(record.get("live"), dict) else None
    if isinstance(stamp, str):
        try:
            return max(0.0, now - calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")))
        except ValueError:
            pass
    try:
        return max(0.0, now - (Path(run_dir) / "run.json").stat().st_mtime) if run_dir else None
    except OSError:
        return None


def live_of(record: dict) -> dict:
    """The progress a running record carries ({} once it has ended: a finished record's `live` is stale)."""
    live = record.get("live")
    return live if record.get("status") == "running" and isinstance(live, dict) else {}


def number(value) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(
        value) else None


def is_plain_baseline(record: dict) -> bool:
    """The baseline family as the budget gives it: no preset, no parameter changed, no technique."""
    return (record.get("variant") == "baseline" and not record.get("preset") and not techniques(record)
            and not differing(record))


def flags_of(record: dict, contended: bool, age: float | None) -> list[str]:
    """Why a row should not be read at face value: a starved machine, departures from the budget, a size over
    the cap, skipped checks, how a run failed, a running record nobody refreshes."""
    flags = ["contended"] if contended else []
    if record.get("overrides"):
        flags.append("overridden")
    cap = record.get("artifact_cap_bytes") or (record.get("budget") or {}).get("artifact_cap_bytes")
    size = record.get("artifact_total_bytes")
    if record.get("status") == "over_cap" or (isinstance(size, int) and isinstance(cap, int) and size > cap):
        flags.append("over cap")
    if (record.get("preflight") or {}).get("skipped"):
        flags.append("unverified")
    status = record.get("status")
    if status == "diverged":
        flags.append(f"diverged at step {record['diverged_step']}" if record.get("diverged_step") is not None
                     else "diverged")
    elif status in ("failed", "interrupted"):
        error = str(record.get("error") or status).strip().splitlines()
        flags.append(error[0] if error else status)
    elif status == "over_eval_limit":
        flags.append("eval over its limit")
    if status == "running" and age is not None and age > STALE_SECONDS:
        flags.append(f"no update for {duration(age)}")
    return flags


def run_rows(results_dir: Path, variant: str | None = None, budget: str | None = None,
             status: str | None = None, now: float | None = None) -> list[dict]:
    """Every readable record under results_dir as a row of full values, best score first, failures last.

    Contention and the baseline are judged over all records (a filter never moves a group's median or mean):
    a run's comparable group is its leaderboard's (budget, hardware, data and tokenizer, overrides), as in
    the report.
    """
    import polars as pl

    from harness.report.tables import CONTENDED_FRACTION, mark_contended, runs_frame, to_run

    found = list(iter_records(results_dir))
    runs = [to_run(record, path) for path, record in found]
    contended: set[str] = set()
    if runs:
        for _, group in runs_frame(runs).group_by("group_key"):
            marked = mark_contended(group, CONTENDED_FRACTION)
            contended |= set(marked.filter(pl.col("contended"))["run_id"].to_list())
    baselines: dict[str, list[float]] = {}
    for run in runs:
        score = number(run.record.get("val_bpb_post_quant"))
        if (run.record.get("status") == "ok" and score is not None and is_plain_baseline(run.record)
                and run.row["run_id"] not in contended and not run.row["unverified"]):  # what the report ranks
            baselines.setdefault(run.row["group_key"], []).append(score)
    wanted = {name: set(value.split(",")) for name, value in (("variant", variant), ("budget_name", budget),
                                                               ("status", status)) if value}
    rows = []
    for (path, record), run in zip(found, runs):
        if any(record.get(name) not in values for name, values in wanted.items()):
            continue
        live = live_of(record)
        score = number(record.get("val_bpb_post_quant"))
        base = baselines.get(run.row["group_key"])
        age = age_seconds(record, path, now) if record["status"] == "running" else None
        rows.append({
            "run_id": path.name, "label": config_label(record), "status": record["status"],
            "val_bpb": score if score is not None else number(live.get("val_bpb")),
            "val_bpb_live": score is None and number(live.get("val_bpb")) is not None,
            "val_step": live.get("val_step") if score is None else None,
            "delta_baseline": score - sum(base) / len(base) if score is not None and base else None,
            "artifact_bytes": record.get("artifact_total_bytes"),
            "tokens_per_second": number(live.get("tokens_per_second") if live else record.get("tokens_per_second")),
            "steps": live.get("step") if live else record.get("steps"),
            "max_steps": live.get("max_steps") if live else None,
            "time_left_seconds": number(live.get("time_left_seconds")) if live else None,
            "train_seconds": number(live.get("seconds") if live else record.get("train_seconds")),
            "flags": flags_of(record, path.name in contended, age),
            "seed": record.get("seed"), "budget": record.get("budget_name"), "variant": record.get("variant"),
            "seconds_since_update": age, "path": str(path),
        })
    return sorted(rows, key=lambda r: (r["status"] in FAILED, r["val_bpb"] is None, r["val_bpb_live"],
                                       r["val_bpb"] if r["val_bpb"] is not None else 0.0))


# ---------------------------------------------------------------------------------------------- text

def duration(seconds: float | None) -> str:
    """45s, 3m12s, 2h05m."""
    if seconds is None:
        return ""
    s = int(round(seconds))
    return f"{s}s" if s < 60 else f"{s // 60}m{s % 60:02d}s" if s < 3600 else f"{s // 3600}h{s % 3600 // 60:02d}m"


def human(n: float | None, unit: str = "") -> str:
    """15.2M, 980k, 512."""
    if n is None:
        return ""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            return f"{n / size:.{1 if abs(n) < 100 * size else 0}f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def steps_text(row: dict) -> str:
    if row["steps"] is None:
        return ""
    if row["status"] != "running":
        return f"{row['steps']:,}"
    done = f"{row['steps']:,}/{row['max_steps']:,}" if row["max_steps"] else f"{row['steps']:,}"
    return done + (f" {duration(row['time_left_seconds'])} left" if row["time_left_seconds"] is not None else "")


@dataclass(frozen=True)
class Column:
    header: str
    keys: tuple[str, ...]   # the row's values it shows (what --json and --csv keep of it)
    text: object            # row → cell text
    right: bool = False     # numbers line up on the right
    min_width: int = 0      # shortened with "…" down to this (0: never shortened, only dropped)


COLUMNS = {
    "run": Column("run", ("run_id",), lambda r: r["run_id"], min_width=12),
    "label": Column("label", ("label",), lambda r: r["label"], min_width=10),
    "status": Column("status", ("status",), lambda r: r["status"]),
    "val_bpb": Column("val_bpb", ("val_bpb", "val_bpb_live", "val_step"), lambda r: "" if r["val_bpb"] is None
                      else ("~" if r["val_bpb_live"] else "") + f"{r['val_bpb']:.4f}", right=True),
    "delta": Column("Δ base", ("delta_baseline",),
                    lambda r: "" if r["delta_baseline"] is None else f"{r['delta_baseline']:+.4f}", right=True),
    "bytes": Column("bytes", ("artifact_bytes",), lambda r: human(r["artifact_bytes"]), right=True),
    "tok_s": Column("tok/s", ("tokens_per_second",), lambda r: human(r["tokens_per_second"]), right=True),
    "steps": Column("steps", ("steps", "max_steps", "time_left_seconds"), steps_text, right=True),
    "flags": Column("flags", ("flags",), lambda r: ", ".join(r["flags"]), min_width=8),
    "seed": Column("seed", ("seed",), lambda r: "" if r["seed"] is None else str(r["seed"]), right=True),
    "budget": Column("budget", ("budget",), lambda r: r["budget"] or "", min_width=6),
    "variant": Column("variant", ("variant",), lambda r: r["variant"] or "", min_width=6),
    "train_s": Column("train s", ("train_seconds",),
                      lambda r: "" if r["train_seconds"] is None else f"{r['train_seconds']:.1f}", right=True),
}
DEFAULT_COLUMNS = ("run", "label", "status", "val_bpb", "delta", "bytes", "tok_s", "steps", "flags")
# What gives way when the terminal is narrow, in order: a column shortened to a width, or dropped (None).
NARROWING = (("run", 20), ("flags", 24), ("label", 28), ("tok_s", None), ("train_s", None), ("seed", None),
             ("variant", None), ("budget", None), ("steps", None), ("run", 12), ("bytes", None), ("run", None),
             ("flags", 8), ("label", 10))
SORT_KEYS = {"run": "run_id", "label": "label", "status": "status", "val_bpb": "val_bpb", "delta": "delta_baseline",
             "bytes": "artifact_bytes", "tok_s": "tokens_per_second", "steps": "steps", "flags": "flags",
             "seed": "seed", "budget": "budget", "variant": "variant", "train_s": "train_seconds"}


def parse_columns(text: str | None) -> list[str]:
    if not text:
        return list(DEFAULT_COLUMNS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in COLUMNS]
    if unknown or not names:
        raise UserError(f"--columns {unknown[0] if unknown else text!r} is not a column; use a comma-separated list "
                        f"of: {', '.join(COLUMNS)}")
    return list(dict.fromkeys(names))


def check_sort(by: str | None) -> str | None:
    """The column `--sort` names (a leading - reverses it); a name that is not a column is refused."""
    if by is None:
        return None
    name = by.removeprefix("-")
    if name not in SORT_KEYS:
        raise UserError(f"--sort {by!r} is not a column; use one of: {', '.join(SORT_KEYS)} (--sort=-NAME reverses)")
    return name


def sort_rows(rows: list[dict], by: str | None) -> list[dict]:
    """Rows by a column (`-name`: descending); empty values last either way."""
    if not by:
        return rows
    key = SORT_KEYS[check_sort(by)]
    present = [r for r in rows if r[key] not in (None, [], "")]
    return sorted(present, key=lambda r: str(r[key]) if isinstance(r[key], list) else r[key],
                  reverse=by.startswith("-")) + [r for r in rows if r[key] in (None, [], "")]


def shorten(text: str, width: int, middle: bool = False) -> str:
    """`text` in at most `width` characters, "…" where it was cut (in the middle: a run id keeps both ends)."""
    if len(text) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    if middle:
        head = (width - 1 + 1) // 2
        return text[:head] + "…" + text[len(text) - (width - 1 - head):]
    return text[:width - 1] + "…"


def terminal_width() -> int:
    return max(20, shutil.get_terminal_size().columns)


def use_color(stream=None) -> bool:
    stream = stream or sys.stdout
    return "NO_COLOR" not in os.environ and hasattr(stream, "isatty") and stream.isatty()


COLORS = {"ok": "32", "running": "36", "over_cap": "33", "over_eval_limit": "33", "pruned": "33",
          "diverged": "31", "failed": "31", "interrupted": "31"}


def paint(text: str, code: str | None, color: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if color and code else text


def render_table(rows: list[dict], columns: list[str], width: int, color: bool = False) -> list[str]:
    """A header and one line per row, never wider than `width`: columns shortened or dropped as NARROWING says."""
    names = list(columns)
    cells = {n: [COLUMNS[n].text(r) for r in rows] for n in names}
    widths = {n: max([len(COLUMNS[n].header), *map(len, cells[n])]) for n in names}
    widths["run"] = min(widths.get("run", 0), 24)

    def total() -> int:
        return sum(widths[n] for n in names) + 2 * (len(names) - 1)

    for name, target in NARROWING:
        if total() <= width:
            break
        if name not in names:
            continue
        if target is None:
            names.remove(name)
        else:
            need = max(target, widths[name] - (total() - width))
            widths[name] = max(min(widths[name], need), COLUMNS[name].min_width, len(COLUMNS[name].header))
    natural = max([len(COLUMNS["label"].header), *map(len, cells.get("label", []))])
    if "label" in names and total() < width:  # room given back by dropped columns goes to the label
        widths["label"] = min(natural, widths["label"] + width - total())
    best = min((r["val_bpb"] for r in rows if r["val_bpb"] is not None and not r["val_bpb_live"]
                and r["status"] == "ok"), default=None)

    def line(values: list[str], row: dict | None) -> str:
        parts = []
        for n, v in zip(names, values):
            v = shorten(v, widths[n], middle=n == "run")
            v = v.rjust(widths[n]) if COLUMNS[n].right else v.ljust(widths[n])
            if row is not None and n == "status":
                v = paint(v, COLORS.get(row["status"]), color)
            elif row is not None and n == "val_bpb" and best is not None and row["val_bpb"] == best:
                v = paint(v, "1", color)
            parts.append(v)
        text = "  ".join(parts).rstrip()
        return text if color else text[:width]

    out = [line([COLUMNS[n].header for n in names], None)]
    out += [line([cells[n][i] for n in names], row) for i, row in enumerate(rows)]
    return out


def row_values(row: dict, columns: list[str] | None) -> dict:
    """A row as --json and --csv give it: every value whole, only the chosen columns' when --columns is given."""
    if columns is None:
        return dict(row)
    return {k: row[k] for n in columns for k in COLUMNS[n].keys}


def results_text(rows: list[dict], columns: str | None = None, sort: str | None = None, limit: int | None = None,
                 fmt: str = "table", width: int | None = None, color: bool = False) -> str:
    chosen = parse_columns(columns)
    rows = sort_rows(rows, sort)[:limit]
    if fmt == "json":
        return json.dumps([row_values(r, chosen if columns else None) for r in rows], indent=1)
    if fmt == "csv":
        values = [row_values(r, chosen if columns else None) for r in rows]
        fields = list(values[0]) if values else [k for n in chosen for k in COLUMNS[n].keys]
        out = io.StringIO()
        writer = csv.DictWriter(out, fields, lineterminator="\n")
        writer.writeheader()
        for v in values:
            writer.writerow({k: ";".join(x) if isinstance(x, list) else x for k, x in v.items()})
        return out.getvalue().rstrip("\n")
    lines = render_table(rows, chosen, width or terminal_width(), color)
    if any(r["val_bpb_live"] for r in rows) and "val_bpb" in chosen:
        lines.append(shorten("~ latest validation of a running run, before quantization", width or terminal_width()))
    return "\n".join(lines)


def results_command(args, results_dir: Path) -> int:
    """`python -m harness results`."""
    unknown = sorted(set(args.status.split(",")) - set(STATUSES)) if args.status else []
    if unknown:
        raise UserError(f"--status {unknown[0]!r} is not a run status; use one of: {', '.join(STATUSES)}")
    if args.json and args.csv:
        raise UserError("--json and --csv each print the whole table; give one of them")
    parse_columns(args.columns)  # a wrong name is said before any record is read
    check_sort(args.sort)
    rows = run_rows(results_dir, args.variant, args.budget, args.status)
    fmt = "json" if args.json else "csv" if args.csv else "table"
    if not rows and fmt == "table":
        filters = " ".join(f"--{k} {v}" for k, v in (("variant", args.variant), ("budget", args.budget),
                                                      ("status", args.status)) if v)
        print(f"no recorded run matches {filters}" if filters else
              "no runs recorded yet (python -m harness run --variant baseline --budget smoke makes one)")
        return 0
    print(results_text(rows, args.columns, args.sort, args.limit, fmt, color=use_color()))
    return 0


# ---------------------------------------------------------------------------------------------- status of a run

def run_status_text(run_dir: Path, record: dict, now: float | None = None) -> str:
    """`status RUN_ID`: one block saying where the run is and how it is doing."""
    live = live_of(record)
    status = record["status"]
    lines = [f"run {run_dir.name}  ({run_dir})", f"  label       {config_label(record)}"]
    if status == "running":
        age = age_seconds(record, run_dir, now)
        said = f"running, last update {duration(age)} ago" if age is not None else "running"
        if age is not None and age > STALE_SECONDS:
            said += " — no update for over 2 minutes: its process may be gone"
        lines.append(f"  status      {said}")
        step = live.get("step")
        if step is not None:
            lines.append(f"  step        {step:,}" + (f"/{live['max_steps']:,}" if live.get("max_steps") else ""))
        spent, left = number(live.get("seconds")), number(live.get("time_left_seconds"))
        if spent is not None or left is not None:
            lines.append("  time        " + ", ".join(t for t in (spent is not None and f"{duration(spent)} spent",
                                                                   left is not None and f"{duration(left)} left") if t))
        if number(live.get("train_loss")) is not None:
            lines.append(f"  train loss  {live['train_loss']:.4f}")
        if number(live.get("val_bpb")) is not None:
            at = f" at step {live['val_step']:,}" if isinstance(live.get("val_step"), int) else ""
            lines.append(f"  val_bpb     {live['val_bpb']:.4f}{at} (latest validation, before quantization)")
        else:
            lines.append("  val_bpb     no validation yet")
        if number(live.get("tokens_per_second")) is not None:
            lines.append(f"  tok/s       {human(live['tokens_per_second'])}")
        if not live:
            lines.append("  progress    none recorded yet (setting up, or a trainer that does not report it)")
        return "\n".join(lines)
    lines.append(f"  status      {status}" + (f" at {record['finished_at']}" if record.get("finished_at") else ""))
    if record.get("steps") is not None:
        spent = number(record.get("train_seconds"))
        lines.append(f"  steps       {record['steps']:,}" + (f" in {duration(spent)}" if spent is not None else ""))
    score, before = number(record.get("val_bpb_post_quant")), number(record.get("val_bpb"))
    if score is not None or before is not None:
        lines.append("  val_bpb     " + ", ".join(t for t in (score is not None and f"{score:.4f} after quantization",
                                                               before is not None and f"{before:.4f} before") if t))
    if record.get("artifact_total_bytes") is not None:
        lines.append(f"  artifact    {record['artifact_total_bytes']:,} bytes")
    if number(record.get("tokens_per_second")) is not None:
        lines.append(f"  tok/s       {human(record['tokens_per_second'])}")
    flags = flags_of(record, False, None)
    if flags:
        lines.append(f"  flags       {', '.join(flags)}")
    return "\n".join(lines)


def status_command(name: str, results_dir: Path) -> int:
    """`python -m harness status NAME`: a study, a sweep or one run, whichever NAME is."""
    from harness import sweep as sw
    from harness.checks import safe_name
    from harness.tune import launch
    from harness.tune import study as st

    safe_name(name, "run, sweep or study name")
    if st.settings_file(results_dir, name).exists():
        print(launch.study_status(st.load_settings(st.settings_file(results_dir, name))))
        return 0
    if sw.state_file(results_dir, name).exists():
        print(sweep_status_text(sw.load_state(results_dir, name)))
        return 0
    run_dir = Path(results_dir) / name
    if (run_dir / "run.json").exists():
        record = read_record(run_dir)
        if record is None:
            raise UserError(f"{run_dir / 'run.json'} is not a readable run record (see the warning above)")
        print(run_status_text(run_dir, record))
        return 0
    known = sorted(p.stem for p in (Path(results_dir) / "sweeps").glob("*.json"))
    raise UserError(f"no sweep or study {name!r} in {results_dir} and no run folder {run_dir}; known sweeps: "
                    f"{', '.join(known) or 'none'}")


def planned_label(plan: dict) -> str:
    """A planned run's label before it has a record: its config resolved as `run` would resolve it."""
    variant, preset = plan.get("variant"), plan.get("preset")
    record = {"variant": Path(str(variant)).stem if str(variant).endswith(".py") else variant, "preset": preset,
              "techniques": [{"name": n} for n in str(plan.get("with_") or "").split(",") if n]}
    try:
        import dataclasses

        from harness.budget import load_budget
        from harness.config import as_dict
        from harness.registry import get_variant

        family, _ = get_variant(str(variant))
        budget = load_budget(str(plan.get("budget")))
        fields = {f.name for f in dataclasses.fields(family.config_cls)}
        flags = {k: v for k, v in (plan.get("params") or {}).items() if k in fields}
        config = family.resolve(preset, budget.model, flags, budget.name)
        record.update(variant=family.name, config=json.loads(json.dumps(as_dict(config), default=str)),
                      budget={"model": budget.model}, budget_name=budget.name)
    except Exception:  # noqa: BLE001 - a plan whose plugin or budget moved still gets a label: its flags
        return " ".join([config_label(record), *(f"{k}={v}" for k, v in (plan.get("params") or {}).items())])
    return config_label(record)


def progress_text(record: dict | None) -> str:
    """'step 120/500, val_bpb 2.3456 (step 100)' for a running record; '' otherwise."""
    live = live_of(record or {})
    if not live:
        return ""
    parts = []
    if live.get("step") is not None:
        parts.append(f"step {live['step']:,}" + (f"/{live['max_steps']:,}" if live.get("max_steps") else ""))
    if number(live.get("val_bpb")) is not None:
        at = f" (step {live['val_step']:,})" if isinstance(live.get("val_step"), int) else ""
        parts.append(f"val_bpb {live['val_bpb']:.4f}{at}")
    return ", ".join(parts)


def sweep_status_text(state: dict) -> str:
    """`status SWEEP`: the counts, then a line per run: state, label, progress or reason, job, run id."""
    from harness import sweep as sw

    results_dir = Path(state["results_dir"])
    states = sw.run_states(state)
    counts: dict[str, int] = {}
    for s in states.values():
        counts[s["state"]] = counts.get(s["state"], 0) + 1
    lines = [f"sweep {state['name']}: {len(states)} runs — " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))]
    plans = {p["run_id"]: p for p in state["runs"]}
    labels = {}
    for run_id, s in states.items():  # a point reused from a plain run reads that run's record
        record = read_record(results_dir / s.get("run_id", run_id), warn=False)
        labels[run_id] = (config_label(record) if record else planned_label(plans[run_id]), record)
    width = max((len(label) for label, _ in labels.values()), default=0)
    for run_id, s in states.items():
        label, record = labels[run_id]
        said = progress_text(record) if s["state"] == "running" else ""
        if record and s["state"] == "done" and number(record.get("val_bpb_post_quant")) is not None:
            said = f"{s['reason']}, val_bpb {record['val_bpb_post_quant']:.4f}"
        job = f"job {s['job']}  " if s["job"] else ""
        log = f"  log {s['log']}" if s["state"] == "failed" else ""
        lines.append(f"  {s['state']:<8} {label:<{width}}  {said or s['reason']:<30}  {job}{s.get('run_id', run_id)}"
                     f"{log}".rstrip())
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- watch

def bar(fraction: float, width: int) -> str:
    filled = int(round(max(0.0, min(1.0, fraction)) * width))
    return "#" * filled + "." * (width - filled)


def watch_line(run_id: str, record: dict | None, label: str, width: int, now: float | None = None,
               label_width: int = 32) -> str:
    """One run as a progress bar: label, bar, step/max (or training seconds of the budget), time left, train
    loss, latest val_bpb, status."""
    head = f"{shorten(label, label_width):<{label_width}} "
    if record is None:
        return shorten(f"{head}[{bar(0, 20)}] not started  {run_id}", width)
    live = live_of(record)
    status = record["status"]
    budget = record.get("budget") or {}
    clock = number(budget.get("train_wallclock_seconds"))
    if live:
        step, cap = live.get("step") or 0, live.get("max_steps")
        spent, left = number(live.get("seconds")) or 0.0, number(live.get("time_left_seconds"))
        total = spent + left if left is not None else clock
        fraction = max(step / cap if cap else 0.0, spent / total if total else 0.0)
        where = f"{step:,}/{cap:,}" if cap else f"{spent:.0f}/{total:.0f}s" if total else f"step {step:,}"
        rest = [where, f"{duration(left)} left" if left is not None else "",
                f"loss {live['train_loss']:.3f}" if number(live.get("train_loss")) is not None else "",
                f"val_bpb {live['val_bpb']:.4f}" if number(live.get("val_bpb")) is not None else ""]
        age = age_seconds(record, None, now) if live.get("updated_at") else None
        said = "running" + (" (no update for " + duration(age) + ": gone?)" if age and age > STALE_SECONDS else "")
    else:
        fraction = 1.0 if status in ENDED else 0.0
        score = number(record.get("val_bpb_post_quant"))
        rest = [f"{record['steps']:,} steps" if record.get("steps") is not None else "",
                f"val_bpb {score:.4f}" if score is not None else ""]
        said = status if status in ENDED else "starting"
    tail = "  ".join([*(r for r in rest if r), said])
    return shorten(f"{head}[{bar(fraction, 20)}] {tail}", width)


def watch_targets(results_dir: Path, name: str | None) -> tuple[str, list[str], dict]:
    """(title, run ids, planned runs by id) for `watch NAME`: a sweep's runs, one run, or every running run.
    A sweep's title is "sweep NAME": its runs have ended when none is pending or running, as `status` says."""
    from harness import sweep as sw
    from harness.checks import safe_name

    if name is None:
        running = [path.name for path, record in iter_records(results_dir) if record["status"] == "running"]
        return f"running runs in {results_dir}", running, {}
    safe_name(name, "run or sweep name")
    if sw.state_file(results_dir, name).exists():
        state = sw.load_state(results_dir, name)
        return f"sweep {name}", [p["run_id"] for p in state["runs"]], {p["run_id"]: p for p in state["runs"]}
    if (Path(results_dir) / name / "run.json").exists():
        return f"run {name}", [name], {}
    raise UserError(f"no run folder {Path(results_dir) / name} and no sweep {name!r} in {results_dir / 'sweeps'}")


def watch_frame(results_dir: Path, title: str, run_ids: list[str], plans: dict, width: int,
                labels: dict, now: float | None = None) -> tuple[list[str], bool]:
    """The lines of one snapshot, and whether every watched run has ended."""
    lines, ended = [shorten(title, width)], True
    records = {run_id: read_record(Path(results_dir) / run_id, warn=False) for run_id in run_ids}
    for run_id, record in records.items():
        if run_id not in labels:  # a label is worked out once: from the record, or from the plan until there is one
            label = config_label(record) if record else planned_label(plans[run_id]) if run_id in plans else None
            if label:
                labels[run_id] = label
        if record is None or record["status"] == "running":
            ended = False
    if not ended and plans:  # a sweep: a run never submitted is not waited for
        from harness import sweep as sw

        state = sw.load_state(results_dir, title.removeprefix("sweep "))
        ended = all(s["state"] in ("done", "failed", "missing") for s in sw.run_states(state).values())
    label_width = min(max(len(labels.get(r, r)) for r in run_ids), max(12, width // 3))
    lines += [watch_line(run_id, record, labels.get(run_id, run_id), width, now, label_width)
              for run_id, record in records.items()]
    return lines, ended


def watch_command(results_dir: Path, name: str | None, interval: float, once: bool, out=None) -> int:
    """`python -m harness watch`: redraw every `interval` seconds until every watched run has ended."""
    out = out or sys.stdout
    title, run_ids, plans = watch_targets(results_dir, name)
    if not run_ids:
        print(f"no run is running in {results_dir}", file=out)
        return 0
    tty = hasattr(out, "isatty") and out.isatty()
    labels: dict[str, str] = {}
    last = None
    try:
        while True:
            width = terminal_width()
            lines, ended = watch_frame(results_dir, title, run_ids, plans, width, labels)
            text = "\n".join(lines)
            if tty and not once:
                out.write("\x1b[H\x1b[J" + text + "\n")
                out.flush()
            elif text != last:
                print(text, file=out, flush=True)
            last = text
            if once:
                return 0
            if ended:
                rows = [r for r in run_rows(results_dir) if r["run_id"] in set(run_ids)]
                print("\n" + results_text(rows, width=width, color=use_color(out)), file=out, flush=True)
                return 0
            time.sleep(interval)
    except KeyboardInterrupt:
        if tty:
            out.write("\n")
        return 130


# ---------------------------------------------------------------------------------------------- sweep and tune lines

def finished_line(n: int, total: int, plan: dict, status: str, run_dir: Path) -> str:
    """'[2/4] eigenweight rank=64: ok, val_bpb 2.3456  RUN_ID' as a sweep prints each run that ends."""
    record = read_record(run_dir, warn=False)
    label = config_label(record) if record else planned_label(plan)
    score = number((record or {}).get("val_bpb_post_quant"))
    return f"[{n}/{total}] {label}: {status}" + (f", val_bpb {score:.4f}" if score is not None else "") + \
        f"  {run_dir.name}"
