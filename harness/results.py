"""Run records: one directory per run, written by one process, the record replaced atomically.

results/<run_id>/ holds run.json (the versioned record), log.txt (everything the run printed), curve.jsonl
(every training step) and model.int8.ptz (the artifact). A run writes its record when it starts (status
"running") and rewrites it when it ends, whatever the ending: ok, over_cap, diverged, interrupted or failed.
No two runs share a file.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from harness import REPO_ROOT

SCHEMA_VERSION = 1
CURVE_POINTS = 256  # steps kept in run.json's curve (plus every validation point); curve.jsonl keeps them all
STATUSES = ("running", "ok", "over_cap", "over_eval_limit", "diverged", "pruned", "interrupted", "failed")


def default_results_dir() -> Path:
    return Path(os.environ.get("HARNESS_RESULTS_DIR", REPO_ROOT / "results"))


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, default=str, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def thin_curve(curve: list[dict], points: int = CURVE_POINTS) -> list[dict]:
    """Every `stride`-th step, the first and last steps and every step with a validation score.

    A ten-minute H100 run takes ~14k steps; keeping each in run.json would make a record a megabyte and a
    report over thousands of runs slow, while plots need a few hundred points.
    """
    stride = max(1, -(-len(curve) // points))
    return [c for n, c in enumerate(curve) if n % stride == 0 or n == len(curve) - 1 or "val_bpb" in c]


def write_curve(path: Path, curve: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text("".join(json.dumps(c, allow_nan=False) + "\n" for c in curve), encoding="utf-8")
    os.replace(tmp, path)


def new_run_id(variant: str, budget: str, seed: int, config_hash: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"{stamp}-{variant}-{budget}-s{seed}-{config_hash[:8]}-{os.urandom(2).hex()}"


def iter_records(results_dir: Path):
    """(run folder, record) for every readable record; one being replaced right now, or a foreign file, is
    skipped so a table or report never crashes on it."""
    import orjson

    for path in sorted(Path(results_dir).glob("*/run.json")):
        try:
            record = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue
        if isinstance(record, dict) and record.get("run_id"):
            yield path.parent, record


def load_records(results_dir: Path) -> list[dict]:
    return [record for _, record in iter_records(results_dir)]


TABLE_COLUMNS = ["run_id", "variant", "preset", "budget_name", "seed", "status", "val_bpb_post_quant", "val_bpb",
                 "val_loss_post_quant", "steps", "ms_per_step", "tokens_per_second", "mfu", "param_count",
                 "artifact_total_bytes", "train_seconds"]


def results_table(results_dir: Path, variant: str | None = None, budget: str | None = None,
                  status: str | None = None):
    """All run records as a polars DataFrame, best val_bpb (after quantization) first, failures last."""
    import polars as pl

    rows = [{c: r.get(c) for c in TABLE_COLUMNS} for r in load_records(results_dir)]
    schema = {c: pl.Float64 for c in ("val_bpb_post_quant", "val_bpb", "val_loss_post_quant", "ms_per_step",
                                      "tokens_per_second", "mfu", "train_seconds")}
    schema.update({c: pl.Int64 for c in ("seed", "steps", "param_count", "artifact_total_bytes")})
    schema.update({c: pl.Utf8 for c in TABLE_COLUMNS if c not in schema})
    df = pl.DataFrame(rows, schema=schema, orient="row") if rows else pl.DataFrame(schema=schema)
    for column, wanted in (("variant", variant), ("budget_name", budget), ("status", status)):
        if wanted:
            df = df.filter(pl.col(column).is_in(wanted.split(",")))
    return df.sort(["val_bpb_post_quant", "val_bpb"], nulls_last=True)
