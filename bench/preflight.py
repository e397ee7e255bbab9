"""Benchmark: what preflight costs before a run, per family, at a budget's sequence length.

    python bench/preflight.py --budgets smoke 10min --repeat 3

Preflight runs on a small CPU copy of the run's model whatever the budget's hardware, so this measures it
here: for every family at its defaults, the median over `--repeat` calls of harness.conformance.preflight
(the checks `run` applies), and that time as a share of the budget's training clock.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import conformance  # noqa: E402
from harness.budget import load_budget  # noqa: E402
from harness.registry import get_variant, known_variant_names  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budgets", nargs="+", default=["smoke", "10min"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--variants", nargs="*", default=None)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.repeat} per cell")
    names = args.variants or known_variant_names()
    budgets = [load_budget(b) for b in args.budgets]
    print(f"{'family':<18}" + "".join(f"{b.name + ' s':>14}{'% clock':>9}" for b in budgets))
    worst = {b.name: 0.0 for b in budgets}
    for name in names:
        variant, _ = get_variant(name)
        row = f"{name:<18}"
        for b in budgets:
            config = variant.resolve(None, b.model, {})
            times = []
            for _ in range(args.repeat):
                findings, summary = conformance.preflight(variant, config, b.seq_len)
                assert not findings, findings
                times.append(summary["seconds"])
            seconds = statistics.median(times)
            worst[b.name] = max(worst[b.name], seconds)
            row += f"{seconds:>14.2f}{100 * seconds / b.train_wallclock_seconds:>8.2f}%"
        print(row, flush=True)
    print("slowest: " + ", ".join(f"{k} {v:.2f} s" for k, v in worst.items()))


if __name__ == "__main__":
    main()
