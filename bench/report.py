"""Benchmark: how long `report` takes over a large results folder.

    python bench/report.py --source results/ --runs 10000 --repeats 3

Builds a results folder of `--runs` records cloned from the real records in `--source` (each clone gets its
own seed, run id and a jittered score, spread over 300 configurations and two budgets, with a 256-point curve
and a log like a ten-minute run's), then times the whole report build (load, leaderboards, plots, index, one
page per run, CSV + Parquet) and prints the median. Run it alone: other load on the machine changes the time.

    python bench/report.py --source results/ --screenshot docs/report.png

instead builds the report of `--source` itself and saves the top of the page as seen in headless Chromium.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def clone_results(source: Path, dest: Path, runs: int, configs: int = 300) -> None:
    templates = [json.loads(p.read_text()) for p in sorted(source.glob("*/run.json"))]
    templates = [t for t in templates if t.get("status") == "ok"]
    if not templates:
        raise SystemExit(f"no finished run records in {source}; run a few smoke runs first")
    rng = random.Random(0)
    for n in range(runs):
        record = json.loads(json.dumps(templates[n % len(templates)]))
        config_index = n % configs
        record["run_id"] = f"clone-{n:06d}"
        record["seed"] = n // configs
        record["config"]["warmdown_steps"] = 1000 + config_index  # a distinct configuration per index
        record["preset"] = f"c{config_index}"
        record["budget_name"] = "smoke" if config_index % 2 else "smoke-b"
        record["budget"]["name"] = record["budget_name"]
        jitter = rng.gauss(0, 0.01) + 0.0005 * (config_index % 37)
        for key in ("val_bpb_post_quant", "val_bpb", "val_loss_post_quant", "val_loss"):
            record[key] += jitter
        steps = 256
        record["curve"] = [{"step": s, "seconds": s * 0.04, "tokens": s * 524288, "train_loss": 6.0 - s / 100}
                           for s in range(1, steps + 1)]
        for point in record["curve"][::64]:
            point.update(val_loss=3.0, val_bpb=1.5)
        run_dir = dest / record["run_id"]
        run_dir.mkdir(parents=True)
        (run_dir / "run.json").write_text(json.dumps(record))
        (run_dir / "log.txt").write_text("".join(f"step {s} | loss 3.0 | 900.0k tok/s\n" for s in range(300)))


def screenshot(source: Path, png: Path) -> None:
    import shutil as sh

    from playwright.sync_api import sync_playwright

    from harness.report import build_report

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "index.html"
        build_report(source, out)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=sh.which("chromium"), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1440, "height": 1500}, device_scale_factor=1)
            page.goto(out.as_uri())
            page.screenshot(path=str(png))
            browser.close()
    print(f"wrote {png}")


def main() -> None:
    from harness.report import build_report

    parser = argparse.ArgumentParser()
    parser.add_argument("--source", type=Path, default=REPO / "results")
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--screenshot", type=Path, help="save a screenshot of --source's report here instead")
    args = parser.parse_args()
    if args.screenshot:
        return screenshot(args.source, args.screenshot)
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "results"
        clone_results(args.source, results, args.runs)
        seconds = []
        for i in range(args.repeats):
            out = Path(tmp) / f"report{i}" / "index.html"
            t0 = time.perf_counter()
            built = build_report(results, out)
            seconds.append(time.perf_counter() - t0)
            size = out.stat().st_size
            shutil.rmtree(out.parent)
        print(f"report over {built.runs:,} runs ({args.runs // 300 or 1} seeds × 300 configurations, 2 budgets): "
              f"median {statistics.median(seconds):.2f} s of {', '.join(f'{s:.2f}' for s in seconds)}; "
              f"index.html {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
