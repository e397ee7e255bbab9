"""Report rendering: leaderboards, plots and run pages as self-contained HTML, or a Markdown summary.

Every string that came from a user or a run (names, parameter values, notes, log lines, errors) goes through
`esc` on its way into the page; the only script is the sorter below, inline, and the page requests nothing.
"""

from __future__ import annotations

import html
import json
import math
import re
import time
from pathlib import Path
from urllib.parse import quote

from harness.report.tables import ACCEPT_NATS, ACCEPT_P, Leaderboard

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
    ("configuration", "variant:preset"), ("#", "rank among finished configurations within the artifact cap"),
    ("key parameters", "config values that differ from this budget's baseline"), ("seeds", "finished seeds"),
    ("val_bpb", "mean after the int8+zlib round trip"), ("± std", "standard deviation over seeds"),
    ("pre-quant", "mean val_bpb before quantization"), ("Δ bpb", "mean val_bpb minus the baseline's"),
    ("p", "one-sided Welch t-test: val_loss at least 0.005 nats below the baseline's"),
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
            + cell(r["params"], r["params"], "t wrap") + cell(r["seeds"])
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
    if not row.get("contended"):
        return ""
    median = board.runs["probe_gflops"].drop_nulls().median()
    below = f" (probe {1 - row['probe_gflops'] / median:.0%} below the median)" if median and row.get(
        "probe_gflops") else ""
    return "contended" + below


def board_title(board: Leaderboard) -> str:
    return f"{board.budget} on {board.hardware}" + (" · with overrides" if board.overrides else "")


def board_heading(board: Leaderboard) -> str:
    base = next((r for r in board.rows if r["config_key"] == board.baseline_key), None)
    bar = (f"The challenge's bar: {ACCEPT_NATS} nats of val_loss at p &lt; {ACCEPT_P} "
           + (f"= {board.bar_bpb:.5f} bpb at the measured {board.tokens_per_byte:.4f} tokens per byte."
              if board.bar_bpb else "(no tokens-per-byte measured, so no bpb equivalent)."))
    baseline = (f"Δ and p compare with the baseline row, {esc(base['label'])} ({base['seeds']} seeds, val_bpb "
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
    label = f"{record.get('variant')}{':' + record['preset'] if record.get('preset') else ''}"
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
            "trip unless marked pre-quant; means and standard deviations are over seeds.</p>")


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
            cells = ["" if r["rank"] is None else str(r["rank"]), name, r["params"] or "", str(r["seeds"]),
                     number(r["bpb_mean"]), number(r["bpb_std"]), number(r["bpb_pre_quant"]), delta,
                     p_text(r["p_value"]), bar, size, number(r["tokens_per_second"], 0)]
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        out.append("")
    return "\n".join(out)
