"""`python -m harness report`: run records → one self-contained HTML report (or a Markdown summary).

Flow: load every run.json (tables.load_runs) → leaderboards per budget and hardware with seed statistics
(tables) → Pareto plots and learning curves (plots) → the index page, a page per run and CSV/Parquet exports
(render). Reports read records, never logs (except to show a run's log tail on its own page). A sweep's or a
study's own page (`sweep --wait`, `tune`, `report --sweep/--study`) is the same report over its members only.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from harness.checks import writable_folder
from harness.errors import UserError
from harness.report import plots, render, tables
from harness.sweep import reused_members

CURVES_PER_BOARD = 8
FEW_TRIALS = 10  # fewer completed trials than this: a study's importances get a caution
PAGE_CHUNK = 500
_SHARED: dict = {}  # what forked workers read: set before the pool starts, never sent through pipes


@dataclass
class Built:
    index: Path
    run_pages: int
    exports: list[Path]
    runs: int


class Progress:
    """A line on stderr about a long build ("report: read 2,400 records…"): silent for the first
    `after_seconds` (a small report says nothing), then at most once a second; `\r`-updated on a terminal."""

    def __init__(self, after_seconds: float = 2.0, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        self.start, self.after, self.last = time.monotonic(), after_seconds, 0.0

    def __call__(self, text: str, final: bool = False) -> None:
        now = time.monotonic()
        if now - self.start < self.after or (now - self.last < 1.0 and not final):
            return
        self.last = now
        tty = getattr(self.stream, "isatty", lambda: False)()
        self.stream.write(("\r" if tty else "") + f"report: {text}" + ("" if tty and not final else "\n"))
        self.stream.flush()


def quiet(text: str, final: bool = False) -> None:
    pass


def member(run: tables.Run, kind: str, name: str, members: dict[str, list[dict]] | None = None) -> bool:
    """Whether a run belongs to the sweep (kind "sweep") or tuning study ("study") called `name`: its record
    says so, by name, or (`members`, a sweep's) the sweep counts a plain run as one of its points. A sweep's
    re-evaluation of a study is a sweep of its own ("NAME-reeval")."""
    infos = [run.record.get(kind), *((members or {}).get(run.row["run_id"], []) if kind == "sweep" else [])]
    return any(isinstance(info, dict) and str(info.get("name")) == name for info in infos)


def select(runs: list[tables.Run], budget: str | None, variant: str | None, sweep: str | None = None,
           study: str | None = None, members: dict[str, list[dict]] | None = None) -> list[tables.Run]:
    """Keep the runs of the named budgets and variants (and sweep or study); a name that matches nothing is a
    user mistake."""
    for kind, name in (("sweep", sweep), ("study", study)):
        if name:
            mine = [r for r in runs if member(r, kind, name, members)]
            if not mine:
                known = sorted({str(r.record[kind]["name"]) for r in runs if isinstance(r.record.get(kind), dict)})
                raise UserError(f"--{kind} {name!r} matches no run record; recorded: {', '.join(known) or 'none'}")
            runs = mine
    for key, wanted in (("budget_name", budget), ("variant", variant)):
        if not wanted:
            continue
        names = [w.strip() for w in wanted.split(",") if w.strip()]
        known = sorted({str(r.row[key]) for r in runs})
        missing = [n for n in names if n not in known]
        if missing:
            flag = "--budget" if key == "budget_name" else "--variant"
            raise UserError(f"{flag} {missing[0]!r} matches no run record; recorded: {', '.join(known) or 'none'}")
        runs = [r for r in runs if r.row[key] in names]
    return runs


def load(results_dir: Path, budget: str | None, variant: str | None, sweep: str | None = None,
         study: str | None = None, progress: Callable = quiet) -> list[tables.Run]:
    if not Path(results_dir).is_dir():
        raise UserError(f"results folder {results_dir} does not exist; pass --results-dir or run something first")
    runs = tables.load_runs(results_dir, progress=lambda n: progress(f"read {n:,} records…"))
    if not runs:
        raise UserError(f"no run records in {results_dir}; make one with: "
                        "python -m harness run --variant baseline --budget smoke")
    members = reused_members(results_dir) if sweep else None  # plain runs a sweep counts as its points
    selected = select(runs, budget, variant, sweep, study, members)  # a mistake: one line on stderr, nothing before
    progress(f"read {len(runs):,} records" + (f", {len(selected):,} selected" if len(selected) < len(runs) else ""),
             final=True)
    return selected


def curve_series(board: tables.Leaderboard, by_key: dict[str, list[tables.Run]]) -> list[dict]:
    """The best configurations' median-seed runs (and the baseline's), as series for learning_curves."""
    ranked = [r["config_key"] for r in board.rows if r["ranked"]]
    labels = {r["config_key"]: r["label"] for r in board.rows}  # the row's label, so the legend matches the table
    keys = list(dict.fromkeys(([board.baseline_key] if board.baseline_key else []) + ranked[:CURVES_PER_BOARD]))
    series = []
    for key in keys:
        finished = sorted((r for r in by_key.get(key, []) if r.row["status"] == "ok"
                           and r.row["val_bpb_post_quant"] is not None), key=lambda r: r.row["val_bpb_post_quant"])
        if not finished:
            continue
        r = finished[(len(finished) - 1) // 2]
        rec = r.record
        final = ({"seconds": rec["train_seconds"], "tokens": rec.get("tokens_seen"), "val_bpb": rec["val_bpb"]}
                 if rec.get("val_bpb") is not None and rec.get("train_seconds") is not None else None)
        series.append({"label": labels.get(key) or r.row["label"],
                       "baseline": key == board.baseline_key, "curve": rec.get("curve") or [], "final": final})
    return series


def board_section(board: tables.Leaderboard, by_key: dict[str, list[tables.Run]], anchor: str) -> str:
    rows = board.rows
    title = render.board_title(board)
    plotted = [r for r in rows if r["seeds"] and not r.get("contended")]  # a starved machine is no point on a front
    cap = max((r["artifact_cap_bytes"] for r in rows if r["artifact_cap_bytes"]), default=None)
    figures = [
        render.figure(plots.pareto_plot(plotted, "artifact_total_bytes", "artifact bytes (model + code)", cap=cap,
                                        log_x=True, title=f"{title}: size"),
                      "val_bpb against artifact bytes; dashed: cap; points are labelled with the table's "
                      "configuration"),
        render.figure(plots.pareto_plot(plotted, "tokens_per_second", "training tokens per second",
                                        maximize_x=True, title=f"{title}: speed"), "val_bpb against throughput"),
        render.figure(plots.pareto_plot(plotted, "stored_param_count", "stored parameters", log_x=True,
                                        title=f"{title}: parameters"), "val_bpb against stored parameters"),
    ]
    curves = render.figure(plots.learning_curves(curve_series(board, by_key), title),
                           "the median run of the best configurations, labelled as in the table; the baseline in "
                           "black", wide=True)
    return (f'<section id="{render.esc(anchor)}"><h2>{render.esc(title)}</h2>{render.board_heading(board)}'
            + render.table(render.LEADERBOARD_HEADERS, render.leaderboard_rows(board), f"{anchor}-table")
            + f'<h3>Pareto fronts</h3><div class="plots">{"".join(figures)}</div>'
            + f'<h3>Learning curves</h3><div class="plots">{curves}</div></section>')


def grouped_section(runs: list[tables.Run], kind: str, members: dict[str, list[dict]] | None = None) -> str:
    """Sweeps (grid tables, parameter plots) and tuning studies (history, Pareto front) found in the records,
    plus `members`: run id → the groups that count a run as theirs without its record saying so (a sweep that
    reused a finished plain run)."""
    groups: dict[str, list[dict]] = {}
    for r in runs:
        for info in [r.record.get(kind), *(members or {}).get(r.row["run_id"], [])]:
            if not (isinstance(info, dict) and info.get("name")):
                continue
            params = info.get("params") or {}
            groups.setdefault(str(info["name"]), []).append({
                **r.row, **params, "trial": info.get("trial"), "_params": list(params), "_record": r.record,
                "pruned_bpb": (r.record.get("pruned_at") or {}).get("val_bpb")})
    parts = []
    for name, rows in sorted(groups.items()):
        params = list(dict.fromkeys(p for row in rows for p in row["_params"]))
        title = f"{'sweep' if kind == 'sweep' else 'study'} {name}"
        if kind == "study":  # trials are named by number, in the order they were asked for
            rows.sort(key=lambda row: row["trial"] if row["trial"] is not None else -1)
            for row in rows:
                row["label"] = f"trial {row['trial']}"
        headers = [("trial" if kind == "study" else "run", "")] + [(p, "swept parameter") for p in params] + [
            ("seed", ""), ("status", ""), ("val_bpb", "post-quant"), ("artifact bytes", ""), ("tok/s", "")]
        body = [f'<tr><td class="t"><a href="{render.esc(render.run_href(row["run_id"]))}">'
                f'{render.esc(row["label"])}</a></td>'
                + "".join(render.cell(row.get(p), tables.format_value(row.get(p))) for p in params)
                + render.cell(row["seed"], str(row["seed"])) + render.cell(row["status"], row["status"], "t")
                + render.cell(row["val_bpb_post_quant"]) + render.cell(row["artifact_total_bytes"])
                + render.cell(row["tokens_per_second"], render.number(row["tokens_per_second"], 0)) + "</tr>"
                for row in rows]
        sampled = {p: json.loads(d) for row in rows  # a study's distributions, as Optuna sampled them
                   for p, d in ((row["_record"].get("study") or {}).get("distributions") or {}).items()}
        figures = [render.figure(plots.parameter_plot(
            rows, p, f"{title}: {p}", log_x=bool(sampled.get(p, {}).get("attributes", {}).get("log")),
            join=kind == "sweep" or sampled.get(p, {}).get("name") == "CategoricalDistribution"),
            f"{p} against val_bpb") for p in params]
        if kind == "study":
            from harness.tune.study import importances

            front = [{**row, "bpb_mean": row["val_bpb_post_quant"], "bpb_std": 0.0} for row in rows]
            completed = sum(1 for row in rows if row["status"] in ("ok", "over_cap", "over_eval_limit")
                            and row["val_bpb_post_quant"] is not None)
            caution = (f" Caution: from only {completed} completed trial{'s' if completed != 1 else ''}; with "
                       f"fewer than {FEW_TRIALS} the importances are rough." if completed < FEW_TRIALS else "")
            objectives = next((row["_record"]["study"].get("objectives") for row in rows), None) or ["val_bpb"]
            figures[:0] = [
                render.figure(plots.history_plot(rows, title), "trials in order; line: best so far"),
                render.figure(plots.importance_plot(importances([row["_record"] for row in rows]), title, completed),
                              "how much each parameter explains of val_bpb across the trials." + caution),
                render.figure(plots.pareto_plot(front, "artifact_total_bytes", "artifact bytes", log_x=True,
                                                cap=rows[0].get("artifact_cap_bytes"), title=f"{title}: size",
                                                point_label="trial"),
                              "trials: val_bpb vs size; line: front")]
            if "tokens_per_second" in objectives:
                figures.insert(3, render.figure(plots.pareto_plot(front, "tokens_per_second", "tokens / s",
                                                                  maximize_x=True, title=f"{title}: speed",
                                                                  point_label="trial"),
                                                "trials: val_bpb vs throughput; line: front"))
        parts.append(f"<h3>{render.esc(title)} ({len(rows)} runs)</h3>" + render.table(headers, body)
                     + f'<div class="plots">{"".join(figures)}</div>')
    if not parts:
        return ""
    heading = "Sweeps" if kind == "sweep" else "Tuning studies"
    return f'<section id="{"sweeps" if kind == "sweep" else "studies"}"><h2>{heading}</h2>{"".join(parts)}</section>'


def build_report(results_dir: Path, out: Path, budget: str | None = None, variant: str | None = None,
                 contended_fraction: float = tables.CONTENDED_FRACTION, sweep: str | None = None,
                 study: str | None = None, progress: Callable = quiet) -> Built:
    """The report over every record in results_dir (or only a sweep's or a study's). `progress` gets a line
    now and then (pass Progress() for stderr after two seconds)."""
    runs = load(results_dir, budget, variant, sweep, study, progress)
    boards = tables.build_leaderboards(runs, contended_fraction)
    by_key: dict[str, list[tables.Run]] = {}
    for r in runs:
        by_key.setdefault(r.row["config_key"], []).append(r)
    out = Path(out)
    pages = out.parent / "runs"
    stem = "leaderboard" if out.stem == "index" else f"{out.stem}-leaderboard"
    exports = [out.with_name(f"{stem}.csv"), out.with_name(f"{stem}.parquet")]
    run_pages = [pages / f"{r.row['run_id']}.html" for r in runs]
    frame = tables.export_frame(boards)
    manifest = claim_outputs(out, results_dir, [*exports, *run_pages], frame.columns)
    anchors = [f"board-{i}" for i in range(len(boards))]
    nav = "<nav>" + "".join(f'<a href="#{a}">{render.esc(render.board_title(b))}</a>'
                            for a, b in zip(anchors, boards)) + '<a href="#runs">all runs</a></nav>'
    filters = " ".join(f"{k} {v}" for k, v in (("sweep", sweep), ("study", study), ("budget", budget),
                                                ("variant", variant)) if v)
    title = f"sweep {sweep}" if sweep else f"study {study}" if study else "golf-harness report"
    frame.write_csv(exports[0])
    frame.write_parquet(exports[1])
    run_rows = sorted((r.row for r in runs), key=lambda row: str(row["started_at"]), reverse=True)
    pages.mkdir(exist_ok=True)
    sections = in_parallel(boards, anchors, by_key, runs, pages, os.path.relpath(out, pages), progress)
    body = (render.report_header(title, str(results_dir), len(runs), filters) + nav
            + "".join(sections)
            + grouped_section(runs, "sweep", reused_members(results_dir)) + grouped_section(runs, "study")
            + '<section id="runs"><h2>All runs</h2><p class="small">Exports: '
            + " ".join(f'<a href="{render.esc(p.name)}">{render.esc(p.name)}</a>' for p in exports) + "</p>"
            + f"<details><summary>{len(run_rows):,} runs, newest first</summary>"
            + render.runs_table(run_rows, "runs-table") + "</details></section>")
    write_text(out, render.page(f"{title} — golf-harness" if sweep or study else title, body))
    remember_outputs(out.parent, manifest, [out, *exports, *run_pages])
    return Built(index=out, run_pages=len(runs), exports=exports, runs=len(runs))


MANIFEST = ".golf-report.json"


def made_here(path: Path, manifest: set[str], columns: list[str] = ()) -> bool:
    """Whether a report wrote `path`: listed in its folder's manifest, or (reports from before the manifest)
    an HTML or Markdown file carrying the report's mark, or an export with exactly the exports' columns."""
    if path.name in manifest or str(path.parent.name + "/" + path.name) in manifest:
        return True
    if path.suffix in (".csv", ".parquet"):
        import polars as pl

        try:
            found = (pl.read_csv(path, n_rows=0).columns if path.suffix == ".csv" else
                     list(pl.read_parquet_schema(path)))
        except Exception:  # not a table polars can read: not one of ours
            return False
        return bool(columns) and found == list(columns)
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return render.GENERATOR.encode() in head or (path.suffix == ".html" and b"golf-harness</title>" in head)


def claim_outputs(out: Path, results_dir: Path | None, extra: list[Path] = (), columns: list[str] = ()) -> set[str]:
    """Check that a report may write `out` (and `extra` beside it): never into a run's folder, never over a file
    it did not write. Returns the folder's manifest of report files."""
    out = Path(out)
    if out.exists() and out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name such as {out / 'index.html'}")
    folder = out.parent.resolve()
    for parent in (folder, *folder.parents):
        if (parent / "run.json").is_file():
            raise UserError(f"--out {out} is inside the run folder {parent}; a report never writes among a run's "
                            f"files: choose another folder (default: reports/)")
    if results_dir is not None and folder == Path(results_dir).resolve():
        raise UserError(f"--out {out} is in the results folder itself; choose another folder (default: reports/)")
    writable_folder(out.parent, "--out folder")
    manifest_path = out.parent / MANIFEST
    try:
        manifest = set(json.loads(manifest_path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        manifest = set()
    for target in (out, *extra):
        if target.is_dir() or (target.exists() and not made_here(target, manifest, columns)):
            raise UserError(f"--out {out}: {target} already exists and no report wrote it; a report never "
                            f"replaces other files, so choose another --out")
    return manifest


def remember_outputs(folder: Path, manifest: set[str], written: list[Path]) -> None:
    names = manifest | {os.path.relpath(p, folder) for p in written}
    write_text(folder / MANIFEST, json.dumps(sorted(names), indent=0))


def in_parallel(boards, anchors, by_key, runs, pages: Path, back: str, progress: Callable = quiet) -> list[str]:
    """Plots (one task per leaderboard) and run pages (chunks of PAGE_CHUNK) on every core, via fork; serial
    where fork is not available. Returns the leaderboard sections in order."""
    _SHARED.update(boards=boards, anchors=anchors, by_key=by_key, runs=runs, pages=pages, back=back)
    chunks = [(i, min(i + PAGE_CHUNK, len(runs))) for i in range(0, len(runs), PAGE_CHUNK)]
    workers = min(os.cpu_count() or 1, len(boards) + len(chunks))
    total, written_pages = len(runs), 0
    try:
        if workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
            for chunk in chunks:
                write_pages(chunk)
                written_pages += chunk[1] - chunk[0]
                progress(f"wrote {written_pages:,}/{total:,} run pages…")
            progress(f"wrote {total:,} run pages; plotting {len(boards)} leaderboard(s)…", final=True)
            return [board_task(i) for i in range(len(boards))]
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            sections = [pool.submit(board_task, i) for i in range(len(boards))]
            written = {pool.submit(write_pages, chunk): chunk for chunk in chunks}
            for done in as_completed(written):
                done.result()
                written_pages += written[done][1] - written[done][0]
                progress(f"wrote {written_pages:,}/{total:,} run pages…")
            progress(f"wrote {total:,} run pages; plotting {len(boards)} leaderboard(s)…", final=True)
            return [s.result() for s in sections]
    finally:
        _SHARED.clear()


def board_task(index: int) -> str:
    return board_section(_SHARED["boards"][index], _SHARED["by_key"], _SHARED["anchors"][index])


def write_pages(chunk: tuple[int, int]) -> None:
    for r in _SHARED["runs"][chunk[0]:chunk[1]]:
        # Plain writes: a run page is rebuilt on every report, so a torn one lasts until the next.
        (_SHARED["pages"] / f"{r.row['run_id']}.html").write_text(
            render.run_page(r.record, r.path, _SHARED["back"]), encoding="utf-8")


def build_markdown(results_dir: Path, budget: str | None = None, variant: str | None = None,
                   contended_fraction: float = tables.CONTENDED_FRACTION, sweep: str | None = None,
                   study: str | None = None) -> str:
    return render.markdown(tables.build_leaderboards(load(results_dir, budget, variant, sweep, study),
                                                     contended_fraction))


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
