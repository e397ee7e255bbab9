"""Benchmark: the cost of submitting a sweep to SLURM — planning every run and submitting the job array.

    python bench/sweep.py                 # starts a throw-away single-node SLURM cluster (Debian packages)
    python bench/sweep.py --repeats 5

Plans sweeps/thirty-experiments.toml (30 runs) with its budget switched to `smoke` (the cluster here has no
GPUs, and the budget does not change how submission works), then times `python -m harness sweep ...
--executor slurm` end to end — interpreter start, planning and validating all 30 runs, one submitit job array —
and cancels the jobs. Prints the median over repeats, per run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))


def main() -> None:
    import slurm_cluster

    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        cluster = slurm_cluster.Cluster(Path(tmp) / "slurm").start()
        try:
            text = (REPO / "sweeps" / "thirty-experiments.toml").read_text().replace('budget = "10min"',
                                                                                     'budget = "smoke"')
            seconds = []
            for i in range(args.repeats):
                spec = Path(tmp) / f"thirty-{i}.toml"
                spec.write_text(text.replace('name = "thirty-experiments"', f'name = "thirty-{i}"'))
                t0 = time.perf_counter()
                done = subprocess.run([sys.executable, "-m", "harness", "sweep", str(spec), "--executor", "slurm",
                                       "--results-dir", str(Path(tmp) / f"results-{i}")], cwd=REPO,
                                      env={**os.environ, **cluster.env}, capture_output=True, text=True)
                seconds.append(time.perf_counter() - t0)
                subprocess.run(["scancel", "--user", "root"], env=cluster.env, capture_output=True)
                if done.returncode:
                    raise SystemExit(done.stderr)
                print(done.stdout.strip().splitlines()[-1])
        finally:
            cluster.stop()
    median = statistics.median(seconds)
    print(f"submitting 30 runs: median {median:.2f} s ({median / 30 * 1000:.0f} ms per run) over "
          f"{', '.join(f'{s:.2f}' for s in seconds)}")


if __name__ == "__main__":
    main()
