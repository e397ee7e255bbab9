"""Report rendering: leaderboards, plots and run pages as self-contained HTML, or a Markdown summary.

Every string that came from a user or a run (names, parameter values, notes, log lines, errors) goes through
`esc` on its way into the page; the only script is the sorter below, inline, and the page requests nothing.
"""

from __future__ import annotations

import bisect
import html
import json
import math
import re
import time
from pathlib import Path
from urllib.parse import quote

from harness.labels import config_label
from harness.report.tables import ACCEPT_NATS, ACCEPT_P, Leaderboard, seeds_text

LOG_TAIL_LINES = 80

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1400px;padding:0 16px;
color:#1b1b1b}
h1{font-size:22px;margin:18px 0 4px}h2{font-size:18px;margin:28px 0 6px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:18px 0 6px}.muted{color:#666}.small{font-size:12px}
nav a{margin-right:12px}
.scroll{max-height:70vh;overflow:auto;border:1px solid #e3e3e3;margin:6px 0 12px}
table{border-collapse:collapse;font-size:12.5px;width:100%}
th,td{padding:3px 7px;border-bottom:1px solid #eee;text-align:right;white-space:nowrap}
th{position:sticky;top:0;background:#f6f6f6;cursor:pointer;user-select:none}
th[aria-sort=ascending]::after{content:" ▲"}th[aria-sort=descending]::after{content:" ▼"}
td.t,th.t{text-align:left}td.wrap{white-space:normal;min-width:180px;max-width:420px}
tr.baseline{background:#f2f2f2;font-weight:600}tr.unranked{color:#8a8a8a}
.flag{color:#b00020;font-weight:600}.good{color:#1a7f37;font-weight:600}
.plots{display:flex;flex-wrap:wrap;gap:10px}.plots figure{margin:0;max-width:100%}
.plots svg{max-width:100%;height:auto}figure.wide svg{width:100%}
pre{background:#f7f7f7;padding:8px;overflow:auto;max-height:60vh;font-size:12px}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 14px}dt{color:#555}dd{margin:0}
details>summary{cursor:pointer;font-weight:600;margin:8px 0}
.fit{display:inline-block}
"""

# Click a header to sort by that column (numbers by their data-v value, text otherwise; empty cells last).
SORTER = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var asc = th.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", asc ? "ascending" : "descending");
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      function key(row) {
        var cell = row.cells[col], v = cell.getAttribute("data-v");
        if (v === null) { v = cell.textContent.trim(); }
        if (v === "") { return null; }
        var n = Number(v);
        return isNaN(n) ? v.toLowerCase() : n;
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === null) { return y === null ? 0 : 1; }
        if (y === null) { return -1; }
        var c = (typeof x === typeof y) ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === "number" ? -1 : 1);
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


NEEDS_ESCAPE = re.compile(r"[&<>\"']")


def esc(value) -> str:
    text = "" if value is None else str(value)
    return html.escape(text, quote=True) if NEEDS_ESCAPE.search(text) else text


def number(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) >= 1000):
        return f"{int(value):,}"
    return f"{value:.{digits}f}"


def p_text(p) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return ""
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def cell(value, text: str | None = None, cls: str = "") -> str:
    """A table cell sorted by its raw value while it shows a formatted one."""
    raw = "" if value is None or (isinstance(value, float) and math.isnan(value)) else value
    shown = number(value) if text is None else text
    klass = f' class="{cls}"' if cls else ""
    return f'<td{klass} data-v="{esc(raw)}">{esc(shown)}</td>'


def table(headers: list[tuple[str, str]], rows: list[str], css_id: str = "") -> str:
    """A sortable table: headers are (text, tooltip); rows are ready `<tr>` strings."""
    ths = "".join(f'<th class="{"t" if i < 1 else ""}" title="{esc(tip)}">{esc(text)}</th>'
                  for i, (text, tip) in enumerate(headers))
    ident = f' id="{esc(css_id)}"' if css_id else ""
    return (f'<div class="scroll"><table class="sortable"{ident}><thead><tr>{ths}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def run_href(run_id: str) -> str:
    return f"runs/{quote(run_id, safe='')}.html"


LEADERBOARD_HEADERS = [
    ("configuration", "family:preset, the parameters that differ from what the budget and preset give, "
                      "+techniques: the same label as in the plots"),
    ("#", "rank among finished configurations within the artifact cap"),
    ("key parameters", "config values that differ from this budget's baseline"),
    ("seeds", "distinct seeds among the scored runs (and the scored runs, where a seed repeats)"),
    ("val_bpb", "mean over scored runs after the int8+zlib round trip"),
    ("± std", "standard deviation over scored runs: across seeds, or run-to-run noise where a seed repeats"),
    ("pre-quant", "mean val_bpb before quantization"), ("Δ bpb", "mean val_bpb minus the baseline's"),
    ("p", "one-sided Welch t-test over scored runs: val_loss at least 0.005 nats below the baseline's"),
    ("bar", "passes the challenge bar: ≥0.005 nats better at p<0.01"),
    ("stored params", "numbers stored in the artifact"), ("artifact bytes", "model + code, largest over seeds"),
    ("tok/s", "training tokens per second"), ("ms/step", "mean training step time"), ("MFU", "model FLOPs use"),
    ("steps", "steps reached"),
    ("runs", "how every run ended: ok, over cap, over the eval limit, diverged, failed, interrupted, pruned"),
    ("flags", "contended: the machine's calibration probe ran more than the set fraction below this "
              "leaderboard's median during these runs, so their wallclock-bound scores are not comparable"),
]
RUN_ENDINGS = (("ok", "ok"), ("over_cap_runs", "over cap"), ("over_eval_limit", "over eval limit"),
               ("diverged", "diverged"), ("failed", "failed"), ("interrupted", "interrupted"), ("pruned", "pruned"))


def leaderboard_rows(board: Leaderboard) -> list[str]:
    rows = []
    for r in board.rows:
        classes = " ".join(c for c, on in (("baseline", r["config_key"] == board.baseline_key),
                                           ("unranked", not r["ranked"])) if on)
        size_flag = "flag" if r["over_cap"] else ""
        bar = {True: ("yes", "good"), False: ("no", ""), None: ("", "")}[r["passes_bar"]]
        delta = "" if r["delta_bpb"] is None else f"{r['delta_bpb']:+.4f}"
        rows.append(
            f'<tr class="{classes}">' + cell(r["label"], r["label"], "t")
            + cell(r["rank"], "" if r["rank"] is None else str(r["rank"]))
            + cell(r["params"], r["params"], "t wrap") + cell(r["seeds"], seeds_text(r))
            + cell(r["bpb_mean"]) + cell(r["bpb_std"]) + cell(r["bpb_pre_quant"])
            + cell(r["delta_bpb"], delta) + cell(r["p_value"], p_text(r["p_value"])) + cell(bar[0], bar[0], bar[1])
            + cell(r["stored_param_count"])
            + cell(r["artifact_total_bytes"], (number(r["artifact_total_bytes"]) + (" OVER CAP" if r["over_cap"]
                                                                                   else "")), size_flag)
            + cell(r["tokens_per_second"], number(r["tokens_per_second"], 0)) + cell(r["ms_per_step"],
                                                                                   number(r["ms_per_step"], 1))
            + cell(r["mfu"], "" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%")
            + cell(r["steps"], number(r["steps"], 0))
            + cell(r["runs"], ", ".join(f"{r[k]} {text}" for k, text in RUN_ENDINGS if r[k]),
                   "t flag" if r["runs"] != r["ok"] else "t")
            + cell(flags_text(r, board), flags_text(r, board), "t flag")
            + "</tr>")
    return rows


def flags_text(row: dict, board: Leaderboard) -> str:
    if row.get("unverified"):
        return "unverified (ran with --no-preflight)"
    repeated = ("seed repeated: ± and p measure run-to-run noise, not seed variance"
                if (row.get("scored_runs") or 0) > (row.get("seeds") or 0) else "")
    if not row.get("contended"):
        return repeated
    median = board.runs["probe_gflops"].drop_nulls().median()
    below = f" (probe {1 - row['probe_gflops'] / median:.0%} below the median)" if median and row.get(
        "probe_gflops") else ""
    return "; ".join(t for t in ("contended" + below, repeated) if t)


def board_title(board: Leaderboard) -> str:
    return f"{board.budget} on {board.hardware}" + (" · with overrides" if board.overrides else "")


def board_heading(board: Leaderboard) -> str:
    base = next((r for r in board.rows if r["config_key"] == board.baseline_key), None)
    bar = (f"The challenge's bar: {ACCEPT_NATS} nats of val_loss at p &lt; {ACCEPT_P} "
           + (f"= {board.bar_bpb:.5f} bpb at the measured {board.tokens_per_byte:.4f} tokens per byte."
              if board.bar_bpb else "(no tokens-per-byte measured, so no bpb equivalent)."))
    baseline = (f"Δ and p compare with the baseline row, {esc(base['label'])} ({esc(seeds_text(base))}, val_bpb "
                f"{number(base['bpb_mean'])})." if base else
                "No finished baseline under this budget and hardware: no Δ or test (run the baseline here).")
    overrides = (f'<p class="small flag">Runs here depart from the budget ({esc(board.overrides)}): they are '
                 f"compared only with each other, never with runs under the plain budget.</p>"
                 if board.overrides else "")
    return (f'<p class="small">Data: {esc(board.dataset)}. {baseline} {bar} Over-cap, contended and unfinished '
            f"configurations are listed, never ranked.</p>{overrides}")


def figure(svg: str | None, caption: str, wide: bool = False) -> str:
    if not svg:
        return ""
    return f'<figure class="{"wide" if wide else ""}">{svg}<figcaption class="small muted">{esc(caption)}' \
           f"</figcaption></figure>"


def runs_table(runs: list[dict], css_id: str = "") -> str:
    headers = [("run", "run folder"), ("configuration", ""), ("budget", ""), ("seed", ""), ("status", ""),
               ("val_bpb", "post-quant"), ("pre-quant", ""), ("steps", ""), ("tok/s", ""),
               ("artifact bytes", ""), ("started", "UTC"), ("note", "")]
    rows = []
    for r in runs:
        status_cls = "" if r["status"] in ("ok", "running") else "flag"
        rows.append(
            f'<tr><td class="t" data-v="{esc(r["run_id"])}"><a href="{esc(run_href(r["run_id"]))}">'
            f'{esc(r["run_id"])}</a></td>' + cell(r["label"], r["label"], "t") + cell(r["budget_name"], None, "t")
            + cell(r["seed"], str(r["seed"])) + cell(r["status"], r["status"], status_cls)
            + cell(r["val_bpb_post_quant"]) + cell(r["val_bpb"]) + cell(r["steps"], number(r["steps"], 0))
            + cell(r["tokens_per_second"], number(r["tokens_per_second"], 0)) + cell(r["artifact_total_bytes"])
            + cell(r["started_at"], r["started_at"], "t") + cell(r["note"], r["note"], "t wrap") + "</tr>")
    return table(headers, rows, css_id)


GENERATOR = "golf-harness report"  # marks the files a report wrote, so a later report may replace them


def page(title: str, body: str, script: bool = True) -> str:
    sorter = f"<script>{SORTER}</script>" if script else ""
    # The policy forbids every request except inline style, inline script and the page's own data: URLs.
    csp = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
            f'<meta name="generator" content="{GENERATOR}">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><title>{esc(title)}</title>'
            f"<style>{STYLE}</style></head><body>{body}{sorter}</body></html>")


def dl(items: list[tuple[str, object]]) -> str:
    return "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items) + "</dl>"


EXPERT_METRIC = re.compile(r"layer(\d+)\.(?:expert_load\.(\d+)|(router_entropy|experts_per_token))")


def expert_table(metrics: dict) -> tuple[str, dict]:
    """Per-layer expert statistics (`layerN.expert_load.E`, `layerN.router_entropy`, `layerN.experts_per_token`)
    as one table, rows = layers; returns it ("" when the record has no expert loads) and the other metrics."""
    layers: dict[int, dict[str, float]] = {}
    rest = {}
    for key, value in metrics.items():
        match = EXPERT_METRIC.fullmatch(key)
        if match:
            layers.setdefault(int(match[1]), {})[match[2] or match[3]] = value
        else:
            rest[key] = value
    experts = sorted({int(k) for row in layers.values() for k in row if k.isdigit()})
    if not experts:
        return "", metrics
    headers = ([("layer", "block index")]
               + [(f"expert {e}", f"expert {e}'s share of the layer's routed assignments") for e in experts]
               + [("router entropy", "mean over tokens, nats"), ("experts/token", "mean experts a token used")])
    rows = ["<tr>" + cell(layer, str(layer), "t") + "".join(cell(row.get(str(e))) for e in experts)
            + cell(row.get("router_entropy")) + cell(row.get("experts_per_token")) + "</tr>"
            for layer, row in sorted(layers.items())]
    return f'<h3>Experts</h3><div class="fit">{table(headers, rows, "experts")}</div>', rest


def run_page(record: dict, run_dir: Path | None, back: str) -> str:
    """One run: what was run, where, what it scored, what the artifact holds, and the end of its log."""
    config = record.get("config") or {}
    env = record.get("environment") or {}
    label = config_label(record)
    parts = [f'<p><a href="{esc(back)}">← report</a></p><h1>{esc(record.get("run_id"))}</h1>',
             f"<p>{esc(label)} under budget {esc(record.get('budget_name'))}, seed {esc(record.get('seed'))}: "
             f"<b>{esc(record.get('status'))}</b></p>"]
    if record.get("note"):
        parts.append(f"<p>note: {esc(record['note'])}</p>")
    if record.get("error"):
        parts.append(f'<p class="flag">error: {esc(record["error"])}</p>')
    experts, variant_metrics = expert_table(record.get("variant_metrics") or {})
    parts.append("<h2>Scores</h2>" + dl([(k, number(record[k]) if isinstance(record[k], int | float)
                                           else record[k]) for k in (
        "val_bpb_post_quant", "val_loss_post_quant", "val_bpb", "val_loss", "tokens_per_byte", "val_tokens",
        "steps", "tokens_seen", "train_seconds", "ms_per_step", "tokens_per_second", "mfu", "eval_seconds",
        "eval_seconds_post_quant", "peak_memory_bytes", "diverged_step") if record.get(k) is not None]
                                        + [(f"variant metric: {k}", v) for k, v in variant_metrics.items()])
                 + experts)
    parts.append(curve_section(record, run_dir))
    cap = record.get("artifact_cap_bytes")
    total = record.get("artifact_total_bytes")
    headroom = f"{cap - total:,} bytes under the cap" if cap and total and total <= cap else \
        ("OVER the cap" if cap and total else "")
    overrides = record.get("overrides") or []
    if overrides:
        parts.append('<p class="flag">departs from the budget: ' + esc(", ".join(
            f"{o.get('name')} {o.get('budget')} → {o.get('effective')}" for o in overrides if isinstance(o, dict)))
                     + "</p>")
    parts.append("<h2>Artifact</h2>" + dl([
        ("model (int8 + zlib)", number(record.get("artifact_model_bytes"))),
        ("code", f"{number(record.get('artifact_code_bytes'))} bytes ({record.get('artifact_code_counted', 'model')}"
                 f" files counted; model files alone {number(record.get('artifact_model_code_bytes'))}): "
                 f"{', '.join(record.get('artifact_code_files') or [])}"),
        ("total", f"{number(total)} of cap {number(cap)} ({headroom})"),
        ("stored numbers", number(record.get("stored_param_count"))),
        ("trainable parameters", number(record.get("param_count")))]))
    parts.append("<h2>Resolved config</h2>" + dl([(k, ",".join(map(str, v)) if isinstance(v, list) else v)
                                                  for k, v in config.items()]))
    parts.append("<h2>Budget</h2>" + dl([(k, json.dumps(v) if isinstance(v, dict) else v)
                                        for k, v in (record.get("budget") or {}).items()]))
    calibration = record.get("calibration") or {}
    compiled = record.get("compile") or {}
    attention = record.get("attention") or {}
    parts.append("<h2>How it ran</h2>" + dl(
        [("precision", record.get("precision")),
         ("attention kernel", f"{attention.get('kernel')} ({attention.get('flash_calls')} of {attention.get('calls')}"
                              f" calls flash-capable; {'; '.join(attention.get('fallback_reasons') or []) or '-'})"
          if attention else None),
         ("compile", ", ".join(f"{k} {v}" for k, v in compiled.items() if k != "enabled") if compiled.get("enabled")
          else "off")]
        + [(f"calibration {when}", ", ".join(f"{k} {v}" for k, v in values.items()))
           for when, values in calibration.items() if isinstance(values, dict)]))
    parts.append("<h2>Environment</h2>" + dl(
        [("commit", f"{record.get('commit')}{' (uncommitted changes)' if record.get('dirty') else ''}"),
         ("command", " ".join(map(str, record.get("command") or []))),
         ("started / finished", f"{record.get('started_at')} / {record.get('finished_at')}"),
         ("dataset", f"{record.get('dataset')} ({str(record.get('dataset_hash'))[:12]})"),
         ("tokenizer", f"{record.get('tokenizer')} ({str(record.get('tokenizer_hash'))[:12]})")]
        + [(k, v) for k, v in env.items()]))
    log_path = run_dir / "log.txt" if run_dir else None
    if log_path and log_path.exists():
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-LOG_TAIL_LINES:]
        parts.append(f"<h2>Log (last {len(lines)} lines)</h2><pre>{esc(chr(10).join(lines))}</pre>")
    return page(f"{record.get('run_id')} — golf-harness", "".join(parts), script=False)


def report_header(title: str, source: str, n_runs: int, filters: str) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return (f"<h1>{esc(title)}</h1><p class=\"muted small\">{n_runs:,} run records from {esc(source)}"
            f"{' · ' + esc(filters) if filters else ''} · built {stamp} · val_bpb is after the int8+zlib round "
            "trip unless marked pre-quant; means and standard deviations are over a configuration's scored runs, "
            "which are distinct seeds unless the seeds column says a seed was run more than once.</p>")


def markdown(boards: list[Leaderboard]) -> str:
    """The leaderboards as Markdown tables, to paste into a pull request."""
    out = [f"<!-- {GENERATOR} -->\n"]
    for board in boards:
        out.append(f"### {board_title(board)}\n")
        out.append(f"Data: {board.dataset}." + (f" Overrides: {board.overrides}." if board.overrides else "") + "\n")
        if board.bar_bpb:
            out.append(f"Bar: {ACCEPT_NATS} nats at p < {ACCEPT_P} = {board.bar_bpb:.5f} bpb "
                       f"(measured {board.tokens_per_byte:.4f} tokens/byte).\n")
        out.append("| # | configuration | key parameters | seeds | val_bpb | ± std | pre-quant | Δ bpb | p | bar "
                   "| artifact bytes | tok/s |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in board.rows:
            name = f"**{r['label']}**" if r["config_key"] == board.baseline_key else r["label"]
            bar = {True: "yes", False: "no", None: ""}[r["passes_bar"]]
            size = number(r["artifact_total_bytes"]) + (" (over cap)" if r["over_cap"] else "")
            delta = "" if r["delta_bpb"] is None else f"{r['delta_bpb']:+.4f}"
            name += " (contended)" if r.get("contended") and "(contended)" not in name else ""
            cells = ["" if r["rank"] is None else str(r["rank"]), name, r["params"] or "", seeds_text(r),
                     number(r["bpb_mean"]), number(r["bpb_std"]), number(r["bpb_pre_quant"]), delta,
                     p_text(r["p_value"]), bar, size, number(r["tokens_per_second"], 0)]
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        out.append("")
    return "\n".join(out)


# A run page's own curve. Run pages are written for every record (10,000 in the benchmark), so their plots are
# drawn as plain SVG here: a matplotlib figure per page would cost a quarter of a second each.
CURVE_PAGE_POINTS = 200
CHART_WIDTH, PLOT_HEIGHT = 520, 200


def run_curve(record: dict, run_dir: Path | None) -> tuple[list[dict], str]:
    """The run's curve, thinned to a few hundred points, and where it came from: run.json's (thinned when the
    run ended: reading every run's full curve.jsonl would dominate a report over thousands of runs), or
    curve.jsonl while the run is running or where the record has no curve."""
    source = "run.json"
    curve = record.get("curve") if isinstance(record.get("curve"), list) else []
    path = run_dir / "curve.jsonl" if run_dir else None
    if (record.get("status") == "running" or len(curve) < 2) and path is not None and path.is_file():
        import orjson

        read = []
        for line in path.read_bytes().splitlines():
            try:
                point = orjson.loads(line)
            except orjson.JSONDecodeError:  # a line being written
                continue
            if isinstance(point, dict):
                read.append(point)
        if len(read) >= len(curve):
            curve, source = read, "curve.jsonl"
    curve = [c for c in curve if isinstance(c, dict) and isinstance(c.get("seconds"), int | float)]
    stride = max(1, -(-len(curve) // CURVE_PAGE_POINTS))
    thinned = [c for n, c in enumerate(curve) if n % stride == 0 or n == len(curve) - 1 or c.get("val_bpb") is not None]
    return thinned, source


def ticks(lo: float, hi: float, integer: bool = False) -> list[float]:
    """Two to seven round values (1, 2, 2.5 or 5 × 10^k apart; whole numbers for integer axes) in [lo, hi]."""
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / 6
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    if integer:
        step = max(1.0, float(round(step)))
    first = math.ceil(lo / step - 1e-9)
    return [n * step for n in range(first, first + 7) if n * step <= hi + 1e-9 * step]


def tick_text(value: float, kind: str = "") -> str:
    """A tick label: 4 significant digits; with kind "eng", thousands as k, millions as M (12.5M tokens)."""
    if kind == "eng":
        for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(value) >= factor:
                return f"{float(f'{value / factor:.3g}'):g}{suffix}"
    return f"{float(f'{value:.4g}'):g}"


def interpolate(value: float, xs: list[float], ys: list[float]) -> float:
    """ys at `value` along increasing xs, linearly (the time at which a tick's token count was reached)."""
    i = min(max(bisect.bisect_left(xs, value), 1), len(xs) - 1)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 if x1 == x0 else y0 + (value - x0) / (x1 - x0) * (y1 - y0)


def svg_chart(series: list[dict], y_label: str, right: list[dict] | None = None, y2_label: str = "",
              tokens: tuple[list[float], list[float]] | None = None,
              x_range: tuple[float, float] | None = None) -> str:
    """One panel as SVG: x = training seconds (bottom) and, when `tokens` maps seconds to tokens, tokens on
    the top axis; `series` on the left y axis, `right` on a second y axis. Each series: {label, x, y, color,
    dash?, marker?}. The legend lists every series drawn; `data-series` names them for tests. `x_range`: the
    seconds the panel spans (default: its points'), so a run's panels share one clock."""
    drawn = [s for s in series + (right or []) if s["x"]]
    left, right_margin, top, plot_h = 62, 62 if right else 18, 40 if tokens else 12, PLOT_HEIGHT
    legend_top = top + plot_h + 54  # below the x axis's label
    w, h = CHART_WIDTH, legend_top + 16 * len(drawn)
    plot_w = w - left - right_margin
    xs = [x for s in drawn for x in s["x"]]
    x_lo, x_hi = x_range if x_range else (min(xs), max(xs))
    x_lo, x_hi = (x_lo, x_hi) if x_hi > x_lo else (x_lo - 0.5, x_hi + 0.5)

    def sx(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * plot_w

    def scale(group: list[dict]):
        values = [y for s in group for y in s["y"]]
        lo, hi = min(values), max(values)
        pad = (hi - lo) * 0.05 or abs(hi) * 0.05 or 0.5
        lo, hi = lo - pad, hi + pad
        return lo, hi, (lambda y: top + (hi - y) / (hi - lo) * plot_h)

    out = [f'<rect x="{left}" y="{top}" width="{plot_w:.1f}" height="{plot_h}" fill="none" stroke="#bbb"/>']
    for t in ticks(x_lo, x_hi):
        out.append(f'<line x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{top}" y2="{top + plot_h}" stroke="#eee"/>'
                   f'<text x="{sx(t):.1f}" y="{top + plot_h + 14}" text-anchor="middle">{tick_text(t)}</text>')
    out.append(f'<text x="{left + plot_w / 2:.1f}" y="{top + plot_h + 32}" text-anchor="middle">training seconds '
               "(the budget's clock)</text>")
    if tokens:
        seconds, counts = tokens
        for t in ticks(min(counts), max(counts), integer=True):
            x = interpolate(t, counts, seconds)
            if x_lo <= x <= x_hi:
                out.append(f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{top}" y2="{top - 4}" stroke="#888"/>'
                           f'<text x="{sx(x):.1f}" y="{top - 7}" text-anchor="middle">{tick_text(t, "eng")}</text>')
        out.append(f'<text x="{left + plot_w / 2:.1f}" y="{top - 24}" text-anchor="middle">training tokens</text>')
    for group, axis_label, side in ((series, y_label, "left"), (right or [], y2_label, "right")):
        group = [s for s in group if s["x"]]
        if not group:
            continue
        lo, hi, sy = scale(group)
        x_axis = left if side == "left" else left + plot_w
        anchor, dx = ("end", -5) if side == "left" else ("start", 5)
        for t in ticks(lo, hi):
            grid = (f'<line x1="{left}" x2="{left + plot_w:.1f}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#eee"/>'
                    if side == "left" else "")
            out.append(f'{grid}<text x="{x_axis + dx}" y="{sy(t) + 4:.1f}" text-anchor="{anchor}">'
                       f"{tick_text(t)}</text>")
        mid, rx = top + plot_h / 2, (14 if side == "left" else w - 6)
        out.append(f'<text transform="translate({rx} {mid:.1f}) rotate(-90)" text-anchor="middle">'
                   f"{esc(axis_label)}</text>")
        for s in group:
            flat = [v for x, y in zip(s["x"], s["y"]) for v in (sx(x), sy(y))]
            path = ("%.1f,%.1f " * len(s["x"]) % tuple(flat)).rstrip()  # one format call: pages are many
            dash = ' stroke-dasharray="5 3"' if s.get("dash") else ""
            out.append(f'<polyline points="{path}" fill="none" stroke="{s["color"]}" stroke-width="1.4"{dash}/>')
            if s.get("marker"):
                out.extend(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{s["color"]}"/>'
                           for x, y in zip(s["x"], s["y"]))
    legend = ['<g id="legend_1">']
    for n, s in enumerate(drawn):
        y = legend_top + 16 * n
        dash = ' stroke-dasharray="5 3"' if s.get("dash") else ""
        legend.append(f'<line x1="{left}" x2="{left + 24}" y1="{y - 4}" y2="{y - 4}" stroke="{s["color"]}" '
                      f'stroke-width="1.6"{dash}/><g id="text_{n + 1}"><text x="{left + 30}" y="{y}">'
                      f"{esc(s['label'])}</text></g>")
    labels = esc(json.dumps([s["label"] for s in drawn]))
    return (f'<svg data-series="{labels}" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
            f'viewBox="0 0 {w} {h}" font-size="11" font-family="sans-serif">' + "".join(out)
            + "".join(legend) + "</g></svg>")


def curve_section(record: dict, run_dir: Path | None) -> str:
    """val_bpb, and the train loss with the learning rate applied, against the clock (tokens on top)."""
    curve, source = run_curve(record, run_dir)
    if len(curve) < 2:
        return ""
    timed = [c for c in curve if isinstance(c.get("tokens"), int | float)]
    tokens = ([c["seconds"] for c in timed], [c["tokens"] for c in timed]) if len(timed) >= 2 else None

    def series(key: str, label: str, color: str, **style) -> dict:
        points = [c for c in curve if isinstance(c.get(key), int | float) and math.isfinite(c[key])]
        return {"label": label, "x": [c["seconds"] for c in points], "y": [c[key] for c in points], "color": color,
                **style}

    val = series("val_bpb", "val_bpb (validation during training)", "#1f77b4", marker=True)
    if record.get("val_bpb") is not None and record.get("train_seconds") is not None:
        final = {"label": "val_bpb, final evaluation", "x": [float(record["train_seconds"])],
                 "y": [float(record["val_bpb"])], "color": "#222222", "marker": True}
    else:
        final = {"label": "", "x": [], "y": []}
    clock = [float(c["seconds"]) for c in curve if isinstance(c.get("seconds"), int | float)] + final["x"]
    span = (0.0, max(clock)) if clock and max(clock) > 0 else None  # both panels on the run's whole clock
    figures = [svg_chart([val, final], "val_bpb", tokens=tokens, x_range=span) if val["x"] or final["x"] else "",
               svg_chart([series("train_loss", "train loss (nats)", "#d62728")], "train loss (nats)",
                         [series("lr", "learning rate (matrix/Muon, as applied)", "#7f7f7f", dash=True)],
                         "learning rate", tokens=tokens, x_range=span)
               if any(c.get("train_loss") is not None for c in curve) else ""]
    captions = ["val_bpb as validated during training (black: the final evaluation, before quantization)",
                "train loss as logged" + ("; dashed, right axis: the learning rate applied"
                                          if any(c.get("lr") is not None for c in curve) else "")]
    shown = [figure(svg, caption) for svg, caption in zip(figures, captions)]
    return (f'<h2>Curve</h2><p class="small muted">{len(curve):,} points ({esc(source)}); top axis: tokens seen '
            f'at that time</p><div class="plots">{"".join(shown)}</div>')
