"""What a tuning study costs outside training: one worker's ask (lock, stale check, count, TPE sample) and
tell (outcome from the run record), per trial, for SQLite and journal storage, as the study grows.

    python bench/tune.py [--trials 200] [--variant mla]

No model is trained: each trial's run record is written by hand with a score drawn from a fixed function of
its parameters, so the sampler does real work on a real study and the numbers are the harness's overhead only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import zlib
from argparse import Namespace
from pathlib import Path

from harness.budget import load_budget
from harness.registry import get_variant
from harness.results import write_json_atomic
from harness.tune import space as sp
from harness.tune import study as st
from harness.tune.launch import plan_study
from harness.tune.worker import Worker


def fake_record(settings: st.Settings, run_id: str, params: dict) -> dict:
    score = 1.2 + sum(zlib.crc32(f"{k}={v}".encode()) % 1000 / 1e5 for k, v in sorted(params.items()))
    return {"run_id": run_id, "status": "ok", "val_bpb_post_quant": score, "val_bpb": score,
            "artifact_total_bytes": 15_000_000, "artifact_cap_bytes": 16_000_000, "eval_seconds_post_quant": 1.0,
            "budget": {"eval_seconds_limit": 600}, "tokens_per_second": 1e6, "steps": 100, "train_seconds": 600}


def measure(storage: str, trials: int, variant_name: str, root: Path) -> dict[str, list[float]]:
    variant, _ = get_variant(variant_name)
    args = Namespace(objectives="val_bpb", pruner="median", report_at="0.25,0.5,0.75", trials=trials, workers=1,
                     only=None, search=[], name=f"bench-{storage}", budget="10min", storage=storage,
                     executor="local", seed=1337, sampler_seed=0, max_steps=None, heartbeat_grace=120.0)
    settings = plan_study(args, {}, variant, None, load_budget("10min"), root)
    worker = Worker(st.save_settings(settings), 0, echo=lambda _: None)

    times: dict[str, list[float]] = {"ask": [], "tell": []}
    for _ in range(trials):
        t0 = time.perf_counter()
        trial = worker.next_trial()
        params = sp.suggest(trial, worker.space, worker.base)
        t1 = time.perf_counter()
        run_id = trial.user_attrs["run_id"]
        (root / run_id).mkdir(parents=True)
        write_json_atomic(root / run_id / "run.json", fake_record(settings, run_id, params))
        t2 = time.perf_counter()
        st.conclude(worker.study, settings, trial.number, json.loads((root / run_id / "run.json").read_text()))
        times["ask"].append(t1 - t0)
        times["tell"].append(time.perf_counter() - t2)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--variant", default="mla")
    args = parser.parse_args()
    print("| storage | trials | ask ms (median, first 20) | ask ms (median, last 20) | tell ms (median) |")
    print("| --- | --- | --- | --- | --- |")
    for storage in ("sqlite", "journal"):
        with tempfile.TemporaryDirectory() as tmp:
            times = measure(storage, args.trials, args.variant, Path(tmp))
        first = statistics.median(times["ask"][:20]) * 1e3
        last = statistics.median(times["ask"][-20:]) * 1e3
        tell = statistics.median(times["tell"]) * 1e3
        print(f"| {storage} | {args.trials} | {first:.1f} | {last:.1f} | {tell:.1f} |")


if __name__ == "__main__":
    main()
