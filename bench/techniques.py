"""Benchmark: what each training-only technique costs per training step, at a fixed step count.

    python bench/techniques.py --steps 30 --runs 3

Runs `run --variant baseline --budget smoke --max-steps N` plain and with each technique (results go to a
temporary folder) and prints the median ms/step, its ratio to the plain base, and the proof's time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness.techniques import known_technique_names  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--variant", default="baseline")
    parser.add_argument("--budget", default="smoke")
    args = parser.parse_args()
    rows = {}
    for technique in ["", *known_technique_names()]:
        ms, proof = [], []
        for seed in range(args.runs):
            with tempfile.TemporaryDirectory() as tmp:
                extra = ["--with", technique] if technique else []
                subprocess.run([sys.executable, "-m", "harness", "run", "--variant", args.variant, "--budget",
                                args.budget, "--max-steps", str(args.steps), "--seed", str(seed), "--quiet",
                                "--results-dir", tmp, *extra], cwd=REPO, check=True, env=dict(os.environ))
                record = json.loads(next(Path(tmp).glob("*/run.json")).read_text())
            ms.append(record["ms_per_step"])
            proof.append((record.get("technique_proof") or {}).get("seconds", 0.0))
        rows[technique or "(plain)"] = (statistics.median(ms), statistics.median(proof))
    base = rows["(plain)"][0]
    print(f"{args.variant} on {args.budget}, {args.steps} steps, median of {args.runs}")
    for name, (ms, proof) in rows.items():
        print(f"  {name:<18} {ms:8.1f} ms/step  ×{ms / base:.2f}  proof {proof:.2f} s")


if __name__ == "__main__":
    main()
