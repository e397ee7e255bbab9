"""Report tables: run records → one row per run → one row per configuration with seed statistics.

A leaderboard holds only runs that can be put side by side: one budget, one kind of hardware, one dataset
(content hash) and tokenizer (hash), and the same departures from the budget (`overrides`: a run with
--max-steps or --data-dir never shares a table with runs under the plain budget). Within it rows are
configurations (variant + resolved config + budget contents, the seed left out), so the seeds of one
configuration become one row with a mean, a standard deviation and a significance test against the baseline
of the same leaderboard. A run whose machine was starved (its calibration probe more than
CONTENDED_FRACTION below the leaderboard's median) is shown in a row of its own, flagged, never ranked.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import polars as pl

from harness.labels import config_label, format_value, techniques
from harness.results import iter_records
from harness.runspec import hashed_config

# The challenge accepts a new record only if it beats the current one by at least this much validation loss,
# shown with p < ACCEPT_P (parameter-golf README, "submission requirements").
ACCEPT_NATS = 0.005
ACCEPT_P = 0.01
FAILED_STATUSES = ("diverged", "failed", "interrupted")
CONTENDED_FRACTION = 0.10

RUN_SCHEMA = {
    "run_id": pl.Utf8, "variant": pl.Utf8, "preset": pl.Utf8, "label": pl.Utf8, "budget_name": pl.Utf8,
    "hardware": pl.Utf8, "group_key": pl.Utf8, "config_key": pl.Utf8, "params": pl.Utf8, "seed": pl.Int64,
    "status": pl.Utf8, "note": pl.Utf8, "started_at": pl.Utf8, "commit": pl.Utf8,
    "val_bpb_post_quant": pl.Float64, "val_bpb": pl.Float64, "val_loss_post_quant": pl.Float64,
    "val_loss": pl.Float64, "tokens_per_byte": pl.Float64, "steps": pl.Int64, "ms_per_step": pl.Float64,
    "tokens_per_second": pl.Float64, "mfu": pl.Float64, "stored_param_count": pl.Int64,
    "artifact_total_bytes": pl.Int64, "artifact_cap_bytes": pl.Int64, "train_seconds": pl.Float64,
    "probe_gflops": pl.Float64, "contended": pl.Boolean, "unverified": pl.Boolean, "techniques": pl.Utf8,
}


@dataclass
class Run:
    """One record, flattened for tables, with its curve and raw record kept for plots and run pages."""

    row: dict
    record: dict
    path: Path | None = None


@dataclass
class Leaderboard:
    budget: str
    hardware: str
    dataset: str                            # "name (hash)" of the data and the tokenizer
    overrides: str                          # departures from the budget shared by every run here ("" for none)
    table: pl.DataFrame                     # one row per configuration, ranked rows first
    runs: pl.DataFrame                      # the runs behind it
    baseline_key: str | None                # config_key of the baseline row, if any
    tokens_per_byte: float | None
    rows: list[dict] = field(default_factory=list)  # the table as Python rows, for rendering


    @property
    def bar_bpb(self) -> float | None:
        """The acceptance bar in bits per byte: nats → bits, then tokens per byte measured on this split."""
        return ACCEPT_NATS / math.log(2) * self.tokens_per_byte if self.tokens_per_byte else None


def hardware_name(record: dict) -> str:
    env = record.get("environment") or {}
    world = record.get("world_size") or env.get("world_size") or 1
    device = env.get("device_name") or env.get("device_type") or "unknown"
    kind = env.get("device_type", "")
    return f"{world}× {device}" if kind == "cuda" else f"{kind or 'cpu'} {device}" + (f" ×{world}" if world > 1 else "")


def overrides_text(record: dict) -> str:
    """The record's departures from its budget, e.g. "max_steps 20000→1, device cuda→cpu" ("" for none)."""
    items = record.get("overrides") or []
    return ", ".join(f"{o.get('name')} {o.get('budget')}→{o.get('effective')}" for o in items if isinstance(o, dict))


def probe_gflops(record: dict) -> float | None:
    """The slower of the run's two calibration matmuls (before and after training), GFLOP/s."""
    calibration = record.get("calibration") or {}
    values = [c.get("matmul_gflops") for c in (calibration.get("before"), calibration.get("after"))
              if isinstance(c, dict) and isinstance(c.get("matmul_gflops"), int | float)]
    return float(min(values)) if values else None


def key_params(config: dict, reference: dict | None, variant: str | None = None) -> str:
    """The config values that differ from the reference (the budget's baseline), as `name=value` pairs; a
    variant's own fields, which the baseline lacks, only where they differ from that variant's defaults."""
    if reference is None:
        return ""
    own = variant_defaults(variant)
    missing = object()
    return " ".join(f"{k}={format_value(v)}" for k, v in config.items()
                    if (reference.get(k, missing) != v if k in reference else own.get(k, missing) != v))


@functools.cache
def variant_defaults(name: str | None) -> dict:
    """A registered variant's default config as record values ({} for a plugin that cannot be found here)."""
    try:
        from harness.config import as_dict
        from harness.registry import get_variant

        return json.loads(json.dumps(as_dict(get_variant(str(name))[0].config_cls())))
    except Exception:  # a plugin file from another machine: show every field rather than fail the report
        return {}


def to_run(record: dict, path: Path | None = None) -> Run:
    budget = {k: v for k, v in (record.get("budget") or {}).items() if k != "source"}
    config = record.get("config")
    key = {"variant": record.get("variant"), "config": hashed_config(config) if isinstance(config, dict) else config,
           "budget": budget}
    used = techniques(record)
    if used:  # techniques are part of what was run: a row of their own
        key["techniques"] = record.get("techniques")
    if record.get("script_sha256"):  # two scripts of the same name are two submissions
        key["script_sha256"] = record["script_sha256"]
    config_key = hashlib.sha256(orjson.dumps(key, option=orjson.OPT_SORT_KEYS, default=str)).hexdigest()
    hardware = hardware_name(record)
    row = {name: record.get(name) for name in RUN_SCHEMA}
    # Tokenizations of the same text share a leaderboard (val_bpb counts bytes, so their scores compare); the
    # tokenizer is then part of the row (the budget's dataset and the vocabulary are in its key; the row's
    # parameters show vocab_size).
    text = record.get("dataset_text_hash")
    dataset = (f"text {str(text)[:8]} in any tokenization" if text else
               f"{record.get('dataset')} ({str(record.get('dataset_hash'))[:8]}), tokenizer "
               f"{record.get('tokenizer')} ({str(record.get('tokenizer_hash'))[:8]})")
    group = (record.get("budget_name"), hardware, dataset, overrides_text(record))
    # The folder names the run (and its page): a record copied from elsewhere cannot point outside it.
    # A run that skipped the preflight checks is shown on a row of its own and never ranked.
    unverified = bool((record.get("preflight") or {}).get("skipped"))
    row.update(run_id=path.name if path else str(record.get("run_id")),
               label=config_label(record) + (" (unverified)" if unverified else ""), hardware=hardware,
               config_key=config_key + ("|unverified" if unverified else ""), group_key="\x1f".join(map(str, group)),
               params="", probe_gflops=probe_gflops(record), contended=False, unverified=unverified,
               techniques=",".join(used))
    return Run(row=row, record=record, path=path)


def mark_contended(group_runs: pl.DataFrame, fraction: float) -> pl.DataFrame:
    """Runs whose probe is more than `fraction` below the leaderboard's median are contended: their config key
    and label change, so they form rows of their own that are shown and never ranked."""
    median = group_runs["probe_gflops"].drop_nulls().median()
    if median is None:
        return group_runs
    slow = pl.col("probe_gflops").is_not_null() & (pl.col("probe_gflops") < (1 - fraction) * median)
    return group_runs.with_columns(
        contended=slow,
        config_key=pl.when(slow).then(pl.col("config_key") + "|contended").otherwise(pl.col("config_key")),
        label=pl.when(slow).then(pl.col("label") + " (contended)").otherwise(pl.col("label")))


def load_runs(results_dir: Path, progress=None) -> list[Run]:
    """Every readable run record under results_dir; `progress(n)` is called every 200 records."""
    runs = []
    for run_dir, record in iter_records(results_dir):
        runs.append(to_run(record, run_dir))
        if progress is not None and len(runs) % 200 == 0:
            progress(len(runs))
    return runs


def runs_frame(runs: list[Run]) -> pl.DataFrame:
    return pl.DataFrame([r.row for r in runs], schema=RUN_SCHEMA, orient="row", strict=False)


def welch_p_value(candidate: list[float], baseline: list[float], margin: float) -> float | None:
    """One-sided Welch t-test of H1: mean(candidate) < mean(baseline) − margin. None without two seeds a side."""
    if len(candidate) < 2 or len(baseline) < 2:
        return None
    from scipy.special import stdtr  # Student's t CDF (scipy.stats would cost a second of imports)

    shifted = [x + margin for x in candidate]
    (m1, v1, n1), (m2, v2, n2) = (moments(shifted), moments(baseline))
    se2 = v1 / n1 + v2 / n2
    if se2 == 0:  # no spread on either side: the means decide
        return 0.0 if m1 < m2 else 1.0
    dof = se2**2 / ((v1 / n1) ** 2 / (n1 - 1) + (v2 / n2) ** 2 / (n2 - 1))  # Welch–Satterthwaite
    return float(stdtr(dof, (m1 - m2) / math.sqrt(se2)))


def moments(values: list[float]) -> tuple[float, float, int]:
    """Mean, sample variance and count."""
    n = len(values)
    mean = sum(values) / n
    return mean, sum((v - mean) ** 2 for v in values) / (n - 1), n


def summarize(runs: pl.DataFrame) -> pl.DataFrame:
    """Runs of one budget and hardware → one row per configuration (seeds aggregated over finished runs)."""
    scored = pl.col("status").is_in(["ok", "over_cap", "over_eval_limit"])
    bpb = pl.col("val_bpb_post_quant").filter(scored)
    return (runs.group_by("config_key", maintain_order=True).agg(
        pl.col("label").first(), pl.col("variant").first(), pl.col("preset").first(),
        pl.col("params").first(),
        pl.col("techniques").first(),
        pl.len().alias("runs"),
        # Distinct seeds among the scored runs, and the scored runs themselves: four runs of one seed are one
        # seed, and their spread is the machine's run-to-run noise, not the variance across seeds.
        pl.col("seed").filter(scored).n_unique().alias("seeds"),
        scored.sum().alias("scored_runs"),
        *[(pl.col("status") == s).sum().alias(s) for s in ("ok", *FAILED_STATUSES, "over_eval_limit", "pruned")],
        (pl.col("status") == "over_cap").sum().alias("over_cap_runs"),
        bpb.mean().alias("bpb_mean"), bpb.std().alias("bpb_std"),
        pl.col("val_bpb").filter(scored).mean().alias("bpb_pre_quant"),
        pl.col("val_loss_post_quant").filter(scored).alias("losses"),
        pl.col("val_loss_post_quant").filter(scored).mean().alias("loss_mean"),
        pl.col("stored_param_count").max(), pl.col("artifact_total_bytes").filter(scored).max(),
        pl.col("artifact_cap_bytes").max(),
        pl.col("tokens_per_second").filter(scored).mean(), pl.col("ms_per_step").filter(scored).mean(),
        pl.col("mfu").filter(scored).mean(), pl.col("steps").filter(scored).mean(),
        pl.col("tokens_per_byte").drop_nulls().first(),
        pl.col("contended").any(), pl.col("unverified").any(), pl.col("probe_gflops").min(),
    ).with_columns(
        over_cap=(pl.col("artifact_total_bytes") > pl.col("artifact_cap_bytes")) | (pl.col("over_cap_runs") > 0),
    ).with_columns(
        ranked=(pl.col("ok") > 0) & ~pl.col("over_cap") & (pl.col("over_eval_limit") == 0) & ~pl.col("contended")
               & ~pl.col("unverified"),
    ))


# The baseline family without training-only techniques (its presets count): what every row is compared with.
PLAIN_BASELINE = (pl.col("variant") == "baseline") & (pl.col("techniques").fill_null("") == "")


def is_plain_baseline(row: dict) -> bool:
    return row.get("variant") == "baseline" and not row.get("techniques")


def seeds_text(row: dict) -> str:
    """'2', or '1 seed, 4 runs' where scored runs repeat a seed (their spread is then run-to-run noise)."""
    seeds, scored = row.get("seeds") or 0, row.get("scored_runs") or 0
    return f"{seeds} seed{'s' if seeds != 1 else ''}, {scored} runs" if scored > seeds else str(seeds)


def pick_baseline(table: pl.DataFrame) -> str | None:
    """The baseline configuration a leaderboard compares against: the baseline with the most finished seeds."""
    base = table.filter(PLAIN_BASELINE & pl.col("ranked"))
    if base.is_empty():
        return None
    return base.sort(["seeds", "bpb_mean"], descending=[True, False], nulls_last=True)["config_key"][0]


def build_leaderboards(runs: list[Run], contended_fraction: float = CONTENDED_FRACTION) -> list[Leaderboard]:
    """One leaderboard per (budget, hardware, data, overrides), best first; each row compared with that
    leaderboard's baseline."""
    frame = runs_frame(runs)
    configs = {r.row["config_key"]: r.record.get("config") or {} for r in runs}
    configs.update({key + "|contended": config for key, config in configs.items()})
    boards = []
    for (group_key,), group_runs in frame.group_by("group_key", maintain_order=True):
        group_runs = mark_contended(group_runs, contended_fraction)
        budget, hardware, dataset, overrides = group_key.split("\x1f")
        table = summarize(group_runs)
        baseline_key = pick_baseline(table)
        reference = configs.get(baseline_key) if baseline_key else None
        if reference is None:  # no baseline: show what differs from the most common value of each field
            reference = common_values([configs[k] for k in table["config_key"]])
        table = table.with_columns(pl.Series("params", [key_params(configs[k], reference, variant) for k, variant
                                                       in table.select("config_key", "variant").iter_rows()],
                                             dtype=pl.Utf8))
        tokens_per_byte = table["tokens_per_byte"].drop_nulls()
        board = Leaderboard(budget=budget, hardware=hardware, dataset=dataset, overrides=overrides, table=table,
                            runs=group_runs, baseline_key=baseline_key,
                            tokens_per_byte=float(tokens_per_byte.median()) if len(tokens_per_byte) else None)
        board.table = compare_with_baseline(board)
        board.rows = board.table.to_dicts()
        boards.append(board)
    return sorted(boards, key=lambda b: (b.budget, b.hardware, b.dataset, b.overrides))


def common_values(configs: list[dict]) -> dict:
    counts: dict[str, dict[str, tuple[int, object]]] = {}
    for config in configs:
        for k, v in config.items():
            seen = counts.setdefault(k, {})
            token = json.dumps(v, sort_keys=True, default=str)
            seen[token] = (seen.get(token, (0, v))[0] + 1, v)
    return {k: max(seen.values(), key=lambda t: t[0])[1] for k, seen in counts.items()}


def compare_with_baseline(board: Leaderboard) -> pl.DataFrame:
    table = board.table
    if board.baseline_key is None:
        return table.with_columns(delta_bpb=pl.lit(None, pl.Float64), p_value=pl.lit(None, pl.Float64),
                                  passes_bar=pl.lit(None, pl.Boolean)).pipe(rank)
    base = table.filter(pl.col("config_key") == board.baseline_key).row(0, named=True)
    p_values, passes = [], []
    for key, losses, ranked in table.select("config_key", "losses", "ranked").iter_rows():
        p = None if key == board.baseline_key else welch_p_value(list(losses), list(base["losses"]), ACCEPT_NATS)
        p_values.append(p)
        passes.append(None if p is None else bool(ranked and p < ACCEPT_P))
    return table.with_columns(
        delta_bpb=pl.col("bpb_mean") - base["bpb_mean"],
        p_value=pl.Series(p_values, dtype=pl.Float64),
        passes_bar=pl.Series(passes, dtype=pl.Boolean),
    ).pipe(rank)


def rank(table: pl.DataFrame) -> pl.DataFrame:
    """Ranked rows (finished, within the cap) by mean val_bpb; unranked rows after them, never numbered."""
    table = table.sort([~pl.col("ranked"), "bpb_mean"], nulls_last=True)
    return table.with_columns(rank=pl.when(pl.col("ranked")).then(pl.col("ranked").cum_sum()).otherwise(None))


EXPORT_COLUMNS = [
    "budget", "hardware", "dataset", "overrides", "rank", "label", "variant", "preset", "params", "seeds",
    "scored_runs", "runs", "ok", "over_cap_runs", "over_eval_limit", "diverged", "failed", "interrupted", "pruned",
    "bpb_mean", "bpb_std", "bpb_pre_quant", "delta_bpb", "loss_mean", "p_value", "passes_bar", "stored_param_count",
    "artifact_total_bytes", "artifact_cap_bytes", "over_cap", "contended", "probe_gflops", "tokens_per_second",
    "ms_per_step", "mfu", "steps", "config_key",
]


def export_frame(boards: list[Leaderboard]) -> pl.DataFrame:
    """Every leaderboard in one flat table (budget and hardware as columns) for CSV / Parquet."""
    parts = [b.table.with_columns(budget=pl.lit(b.budget), hardware=pl.lit(b.hardware), dataset=pl.lit(b.dataset),
                                  overrides=pl.lit(b.overrides)).select(EXPORT_COLUMNS)
             for b in boards]
    return pl.concat(parts, how="vertical_relaxed") if parts else pl.DataFrame()
