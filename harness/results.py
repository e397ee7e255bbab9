"""Run records: one directory per run, written by one process, the record replaced atomically.

results/<run_id>/ holds run.json (the versioned record), log.txt (everything the run printed), curve.jsonl
(every training step) and model.int8.ptz (the artifact). A run writes its record when it starts (status
"running") and rewrites it when it ends, whatever the ending: ok, over_cap, diverged, interrupted or failed.
No two runs share a file.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

from harness import REPO_ROOT
from harness.checks import SAFE_NAME

SCHEMA_VERSION = 2
CURVE_POINTS = 256  # steps kept in run.json's curve (plus every validation point); curve.jsonl keeps them all
STATUSES = ("running", "ok", "over_cap", "over_eval_limit", "diverged", "pruned", "interrupted", "failed")


def default_results_dir() -> Path:
    return Path(os.environ.get("HARNESS_RESULTS_DIR", REPO_ROOT / "results"))


def write_atomic(path: Path, data: bytes) -> None:
    """Write a file whole or not at all: a temporary beside it, fsynced, then renamed over it. A write that fails
    (a full disk) removes the temporary and leaves the old file as it was."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=1, default=str, allow_nan=False).encode())


def thin_curve(curve: list[dict], points: int = CURVE_POINTS) -> list[dict]:
    """Every `stride`-th step, the first and last steps and every step with a validation score.

    A ten-minute H100 run takes ~14k steps; keeping each in run.json would make a record a megabyte and a
    report over thousands of runs slow, while plots need a few hundred points.
    """
    stride = max(1, -(-len(curve) // points))
    return [c for n, c in enumerate(curve) if n % stride == 0 or n == len(curve) - 1 or "val_bpb" in c]


def write_curve(path: Path, curve: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(c, allow_nan=False) + "\n" for c in curve).encode())


def new_run_id(variant: str, budget: str, seed: int, config_hash: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"{stamp}-{variant}-{budget}-s{seed}-{config_hash[:8]}-{os.urandom(2).hex()}"


# The record's schema: field → what it holds. "?" allows null. Version 2 added precision, attention, overrides,
# calibration, compile and tokenizer_check; a version-1 record is read without them.
_NUM, _INT, _STR, _BOOL = "number", "integer", "string", "true/false"
_DICT, _LIST = "table", "list"
REQUIRED_FIELDS = {"schema_version": _INT, "run_id": _STR, "status": _STR, "variant": _STR, "seed": _INT,
                   "budget_name": _STR, "config": _DICT, "started_at": _STR}
OPTIONAL_FIELDS = {
    "config_hash": _STR, "preset": _STR, "budget": _DICT, "command": _LIST, "note": _STR, "sweep": _DICT,
    "study": _DICT, "finished_at": _STR, "commit": _STR, "dirty": _BOOL, "environment": _DICT,
    "hardware_matches_budget": _BOOL, "dataset": _STR, "dataset_hash": _STR, "tokenizer": _STR,
    "tokenizer_hash": _STR, "tokenizer_check": _STR, "val_tokens": _INT, "val_bytes": _INT,
    "tokens_per_byte": _NUM, "world_size": _INT, "grad_accumulation": _INT, "compiled": _BOOL,
    "warmup_steps": _INT, "precision": _STR, "attention": _DICT, "overrides": _LIST, "param_count": _INT,
    "stored_param_count": _INT, "model_flops_per_token": _NUM, "dataset_entropy_bits_per_byte": _NUM,
    "resumed": _LIST, "calibration": _DICT, "setup_seconds": _NUM, "warmup_seconds": _NUM, "steps": _INT,
    "tokens_seen": _INT, "train_seconds": _NUM, "ms_per_step": _NUM, "tokens_per_second": _NUM, "curve": _LIST,
    "diverged_step": _INT, "error": _STR, "val_seconds_in_training": _NUM, "peak_memory_bytes": _INT, "mfu": _NUM,
    "val_loss": _NUM, "val_bpb": _NUM, "eval_seconds": _NUM, "variant_metrics": _DICT,
    "artifact_model_bytes": _INT, "artifact_code_bytes": _INT, "artifact_total_bytes": _INT,
    "artifact_cap_bytes": _INT, "artifact_code_counted": _STR, "artifact_model_code_bytes": _INT,
    "artifact_submission_code_bytes": _INT, "artifact_code_files": _LIST, "val_loss_post_quant": _NUM,
    "val_bpb_post_quant": _NUM, "eval_seconds_post_quant": _NUM, "compile": _DICT, "pruned_at": _DICT,
    "wallclock_seconds_total": _NUM, "outside_training_fraction": _NUM, "preflight": _DICT,
    "variant_sha256": _STR, "code_sha256": _STR, "sealed": _DICT, "techniques": _LIST, "technique_proof": _DICT,
    "dataset_text_hash": _STR, "eval_scheme": _DICT, "export_seconds": _NUM, "late_qat_steps": _INT,
    "val_loss_post_quant_standard": _NUM, "val_bpb_post_quant_standard": _NUM,
    # a challenge script run as it is (harness/script_run.py)
    "script": _STR, "script_sha256": _STR, "script_env": _DICT, "launch": _LIST, "exit_code": _INT,
    "score_line": _STR,
    # while a run trains (harness/live.py); a finished record may keep it
    "live": _DICT, "tensorboard": _STR,
}
# Inside tables and lists: what reports read from them.
NESTED_FIELDS = {
    "environment": {"device_type": _STR, "device_name": _STR, "world_size": _INT, "hostname": _STR},
    "budget": {"device": _STR, "device_count": _INT, "train_wallclock_seconds": _NUM, "tokens_per_step": _INT,
               "seq_len": _INT, "dataset": _STR, "max_steps": _INT, "artifact_cap_bytes": _INT},
    "sweep": {"name": _STR, "params": _DICT}, "study": {"name": _STR, "trial": _INT, "distributions": _DICT,
                                                       "objectives": _LIST},
    "pruned_at": {"fraction": _NUM, "spent": _NUM, "step": _INT, "val_bpb": _NUM},
    "curve[]": {"step": _INT, "seconds": _NUM, "tokens": _INT, "train_loss": _NUM, "val_loss": _NUM, "val_bpb": _NUM,
                "lr": _NUM, "lr_scale": _NUM, "grad_norm": _NUM, "tokens_per_second": _NUM},
    "live": {"step": _INT, "max_steps": _INT, "seconds": _NUM, "time_left_seconds": _NUM, "train_loss": _NUM,
             "val_bpb": _NUM, "val_step": _INT, "tokens_per_second": _NUM, "updated_at": _STR},
    "overrides[]": {"name": _STR}, "calibration.before": {"matmul_gflops": _NUM},
    "calibration.after": {"matmul_gflops": _NUM},
}


def _kind_ok(value, kind: str) -> bool:
    if kind == _NUM:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, {_INT: int, _STR: str, _BOOL: bool, _DICT: dict, _LIST: list}[kind]) and not (
        kind == _INT and isinstance(value, bool))


def record_problem(record, folder: str | None = None) -> str | None:
    """What makes `record` unreadable by the tables and reports (None when it is fine): a missing field, a wrong
    type, an unknown status or a newer schema, said as "field 'seed' should be an integer, got 'one'"."""
    if not isinstance(record, dict):
        return f"it holds a {type(record).__name__}, not a run record"
    version = record.get("schema_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        return f"schema_version {version} is newer than this harness reads ({SCHEMA_VERSION}); update the harness"

    def wrong(name: str, value, kind: str) -> str:
        return f"field {name!r} should be {'an' if kind[0] in 'aeiou' else 'a'} {kind}, got {value!r:.60}"

    for name, kind in REQUIRED_FIELDS.items():
        if name not in record:
            return f"field {name!r} is missing"
        if not _kind_ok(record[name], kind):
            return wrong(name, record[name], kind)
    for name, kind in OPTIONAL_FIELDS.items():
        if record.get(name) is not None and not _kind_ok(record[name], kind):
            return wrong(name, record[name], kind)
    if record["status"] not in STATUSES:
        return f"field 'status' is {record['status']!r}, not a run status ({', '.join(STATUSES)})"
    if not SAFE_NAME.fullmatch(record["run_id"]):
        return f"field 'run_id' {record['run_id']!r:.60} cannot name a folder"
    for path, fields in NESTED_FIELDS.items():
        top, _, inner = path.partition(".")
        many = top.endswith("[]")
        container = record.get(top.removesuffix("[]"))
        if inner:
            container = container.get(inner) if isinstance(container, dict) else None
        items = container if many and isinstance(container, list) else [container] if container is not None else []
        for item in items:
            if not isinstance(item, dict):
                return f"field {path!r} should hold tables, got {item!r:.60}"
            for name, kind in fields.items():
                if item.get(name) is not None and not _kind_ok(item[name], kind):
                    return wrong(f"{path.removesuffix('[]')}.{name}", item[name], kind)
    return None


_warned: set[str] = set()


def reset_warnings() -> None:
    """A new command warns about each damaged file again (one warning per file per command)."""
    _warned.clear()


def warn_skipped(path: Path, why: str) -> None:
    """One warning per damaged file per process: the file, and what is wrong with it."""
    if str(path) not in _warned:
        _warned.add(str(path))
        print(f"warning: skipping {path}: {why}", file=sys.stderr, flush=True)


def read_record(run_dir: Path, warn: bool = True) -> dict | None:
    """The run's record if it is readable and fits the schema; None (and a warning) otherwise."""
    import orjson

    path = Path(run_dir) / "run.json"
    try:
        record = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, orjson.JSONDecodeError) as exc:
        why = f"cannot read it ({exc.strerror})" if isinstance(exc, OSError) else f"not valid JSON ({exc})"
        if warn:
            warn_skipped(path, why)
        return None
    problem = record_problem(record)
    if problem:
        if warn:
            warn_skipped(path, problem)
        return None
    return record


def iter_records(results_dir: Path):
    """(run folder, record) for every record that fits the schema; a damaged one is skipped with one warning
    naming the file and the field, so no table, report or status ever stops on it."""
    for path in sorted(Path(results_dir).glob("*/run.json")):
        record = read_record(path.parent)
        if record is not None:
            yield path.parent, record


def load_records(results_dir: Path) -> list[dict]:
    return [record for _, record in iter_records(results_dir)]
