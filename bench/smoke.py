"""Benchmark: the smoke budget's throughput and the share of wallclock spent outside training steps.

    python bench/smoke.py --runs 3

Runs the README's main command N times (results go to a temporary folder) and prints the median tokens/s,
ms/step and outside-training share, with the median time of each phase outside the training steps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--budget", default="smoke")
    parser.add_argument("--variant", default="baseline")
    args = parser.parse_args()
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "harness", "run", "--variant", args.variant, "--budget",
                            args.budget, "--quiet", "--seed", str(i)], cwd=REPO, check=True,
                           env={**os.environ, "HARNESS_RESULTS_DIR": tmp})
            process_seconds = time.perf_counter() - t0
            record = json.loads(next(Path(tmp).glob(f"*-s{i}-*/run.json")).read_text())
            record["process_seconds"] = process_seconds
            records.append(record)

    def med(key):
        values = [r[key] for r in records if r.get(key) is not None]
        return statistics.median(values) if values else float("nan")

    print(f"{args.variant} on {args.budget}, {len(records)} runs, medians:")
    print(f"  tokens/s                {med('tokens_per_second'):,.0f}")
    print(f"  ms/step                 {med('ms_per_step'):.1f}")
    print(f"  steps                   {med('steps'):.0f}")
    print(f"  val_bpb (post-quant)    {med('val_bpb_post_quant'):.4f}")
    print(f"  train seconds           {med('train_seconds'):.2f}")
    print(f"  process wallclock       {med('process_seconds'):.2f} s "
          f"(record's own: {med('wallclock_seconds_total'):.2f} s)")
    print(f"  outside training        {100 * med('outside_training_fraction'):.1f}% of the record's wallclock")
    for record in records:  # nested figures, flattened for med()
        record["preflight_seconds"] = record.get("preflight", {}).get("seconds")
        record["sealed_seconds"] = (record.get("sealed") or {}).get("seconds")
    for key in ("setup_seconds", "preflight_seconds", "warmup_seconds", "val_seconds_in_training", "eval_seconds",
                "sealed_seconds", "eval_seconds_post_quant"):
        print(f"    {key:<24} {med(key):.2f} s")
    print(f"  preflight               {100 * med('preflight_seconds') / med('train_seconds'):.2f}% of the training "
          f"clock")


if __name__ == "__main__":
    main()
