"""The report: numbers that match a hand computation from the records, budgets never mixed, over-cap runs never
ranked, every user string escaped, and a page that works in a real headless Chromium."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import statistics
from pathlib import Path

import polars as pl
import pytest
from scipy import stats

from conftest import harness_cli, harness_main
from harness.budget import load_budget
from harness.errors import UserError
from harness.registry import get_variant
from harness.report import plots, tables
from harness.train import RunSpec, run

CONFIGS = [("baseline", None), ("mla", "gqa_latent64"), ("depth_recurrence", None)]
INJECTED = '<script>window.__injected = 1</script><img src="https://example.com/x.png"> & "quoted"'


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory) -> Path:
    """Real runs of the smoke budget — baseline and two variants — cut to a few steps and a short validation
    slice, and a second seed of each: a copy of the real record with seed 2 and its scores moved by a known
    amount (each real run pays the sealed round trip, the bulk of this module's time; the tests here are about
    what the report does with records). One run carries a note with markup in it."""
    results = tmp_path_factory.mktemp("results")
    budget = dataclasses.replace(load_budget("smoke"), val_tokens_cap=8192)
    for n, (name, preset) in enumerate(CONFIGS):
        variant, _ = get_variant(name)
        config = variant.resolve(preset, budget.model, None, budget.name)
        note = INJECTED if name == "mla" else None
        record = run(RunSpec(variant=variant, config=config, budget=budget, preset=preset, seed=1,
                             results_dir=results, max_steps=3, quiet=True, note=note, command=["test"]))
        assert record["status"] == "ok", record.get("error")
        shift = 0.01 * (n + 1)  # a different spread per configuration, so every Welch test has a variance
        second = {**record, "seed": 2, "note": None, "run_id": record["run_id"].replace("-s1-", "-s2-") + "-copy",
                  **{k: record[k] + shift for k in ("val_loss_post_quant", "val_loss", "val_bpb_post_quant",
                                                    "val_bpb")}}
        shutil.copytree(results / record["run_id"], results / second["run_id"])
        (results / second["run_id"] / "run.json").write_text(json.dumps(second))
    # Each run probed the machine's speed as it was then; on a busy machine some probes are slow and those runs
    # would be flagged contended. These tests are about the leaderboard's arithmetic, so every run is given the
    # first run's probe (contention has tests of its own below).
    first = None
    for path in sorted(results.glob("*/run.json")):
        record = json.loads(path.read_text())
        first = first or record["calibration"]
        record["calibration"] = first
        path.write_text(json.dumps(record))
    return results


def records_of(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(results.glob("*/run.json"))]


def copy_results(src: Path, dst: Path, change=None) -> Path:
    """A copy of a results folder, each record passed through `change(record)` (to build edge cases)."""
    shutil.copytree(src, dst)
    for path in dst.glob("*/run.json"):
        record = json.loads(path.read_text())
        if change:
            change(record)
        path.write_text(json.dumps(record))
    return dst


def test_leaderboard_matches_a_hand_computation(smoke_results):
    records = records_of(smoke_results)
    (board,) = tables.build_leaderboards(tables.load_runs(smoke_results))
    by_label: dict[str, list[dict]] = {}
    for r in records:
        by_label.setdefault(f"{r['variant']}{':' + r['preset'] if r['preset'] else ''}", []).append(r)
    rows = {r["label"]: r for r in board.table.to_dicts()}
    assert set(rows) == set(by_label) and all(r["seeds"] == 2 for r in rows.values())
    base = [r["val_loss_post_quant"] for r in by_label["baseline"]]
    base_bpb = statistics.mean(r["val_bpb_post_quant"] for r in by_label["baseline"])
    for label, runs in by_label.items():
        row = rows[label]
        bpbs = [r["val_bpb_post_quant"] for r in runs]
        assert row["bpb_mean"] == pytest.approx(statistics.mean(bpbs), rel=1e-12)
        assert row["bpb_std"] == pytest.approx(statistics.stdev(bpbs), rel=1e-9)
        assert row["bpb_pre_quant"] == pytest.approx(statistics.mean(r["val_bpb"] for r in runs), rel=1e-12)
        assert row["delta_bpb"] == pytest.approx(statistics.mean(bpbs) - base_bpb, abs=1e-12)
        assert row["artifact_total_bytes"] == max(r["artifact_total_bytes"] for r in runs)
        if label != "baseline":
            losses = [r["val_loss_post_quant"] + 0.005 for r in runs]
            expected = stats.ttest_ind(losses, base, equal_var=False, alternative="less").pvalue
            assert row["p_value"] == pytest.approx(expected, rel=1e-9)
            assert row["passes_bar"] == (expected < 0.01)
    ranked = sorted(rows.values(), key=lambda r: r["bpb_mean"])
    assert [r["rank"] for r in ranked] == [1, 2, 3]
    tokens_per_byte = records[0]["val_tokens"] / records[0]["val_bytes"]
    assert board.bar_bpb == pytest.approx(0.005 / math.log(2) * tokens_per_byte)


def test_the_baseline_with_techniques_is_a_row_of_its_own_never_the_reference(smoke_results, tmp_path):
    results = copy_results(smoke_results, tmp_path / "r")
    for n, path in enumerate(sorted(results.glob("*baseline*/run.json")) * 2):  # more seeds than the plain one
        record = json.loads(path.read_text())
        record.update(seed=100 + n, techniques=[{"name": "mtp", "config": {"mtp_heads": 2, "mtp_weight": 0.3}}],
                      val_bpb_post_quant=record["val_bpb_post_quant"] - 0.5, run_id=f"{record['run_id']}-mtp{n}")
        (results / record["run_id"]).mkdir()
        (results / record["run_id"] / "run.json").write_text(json.dumps(record))
    (board,) = tables.build_leaderboards(tables.load_runs(results))
    rows = {r["label"]: r for r in board.table.to_dicts()}
    assert rows["baseline +mtp"]["seeds"] == 4 and rows["baseline"]["seeds"] == 2
    assert board.baseline_key == rows["baseline"]["config_key"]
    assert rows["baseline +mtp"]["delta_bpb"] == pytest.approx(-0.5, abs=0.05)


def test_welch_test_needs_two_seeds_and_honours_the_margin():
    assert tables.welch_p_value([1.0], [2.0, 2.1], 0.005) is None
    clearly_better = tables.welch_p_value([2.00, 2.01, 2.02], [2.50, 2.51, 2.52], 0.005)
    within_margin = tables.welch_p_value([2.498, 2.499, 2.500], [2.500, 2.501, 2.502], 0.005)
    assert clearly_better < 1e-4 and within_margin > 0.5
    assert tables.welch_p_value([2.0, 2.0], [2.5, 2.5], 0.005) == 0.0  # no spread: the means decide


def test_over_cap_configurations_are_flagged_and_never_ranked(smoke_results, tmp_path):
    def shrink_cap_for_mla(record):
        if record["variant"] == "mla":
            record["artifact_cap_bytes"] = record["artifact_total_bytes"] - 1
            record["status"] = "over_cap"
    results = copy_results(smoke_results, tmp_path / "r", shrink_cap_for_mla)
    (board,) = tables.build_leaderboards(tables.load_runs(results))
    rows = {r["label"]: r for r in board.table.to_dicts()}
    assert rows["mla:gqa_latent64"]["over_cap"] and rows["mla:gqa_latent64"]["rank"] is None
    assert rows["mla:gqa_latent64"]["passes_bar"] in (False, None)
    assert sorted(r["rank"] for r in rows.values() if r["rank"] is not None) == [1, 2]
    assert board.table["label"].to_list()[-1] == "mla:gqa_latent64"  # unranked rows come last


def test_budgets_and_hardware_are_never_mixed(smoke_results, tmp_path):
    def move_depth_recurrence(record):
        if record["variant"] == "depth_recurrence":
            record["environment"]["device_name"] = "other-cpu"
    results = copy_results(smoke_results, tmp_path / "r", move_depth_recurrence)
    boards = tables.build_leaderboards(tables.load_runs(results))
    assert len(boards) == 2
    lone = next(b for b in boards if "other-cpu" in b.hardware)
    assert lone.table["label"].to_list() == ["depth_recurrence"] and lone.baseline_key is None
    assert lone.table["delta_bpb"].to_list() == [None]


def test_a_run_on_a_starved_machine_is_shown_apart_and_never_ranked(smoke_results, tmp_path):
    def starve_one_baseline(record):
        if record["variant"] == "baseline" and record["seed"] == 2:
            probe = tables.probe_gflops(record)  # the slower of its two probes, as every other run's
            record["calibration"]["after"] = {**record["calibration"]["before"], "matmul_gflops": 0.5 * probe}
    results = copy_results(smoke_results, tmp_path / "r", starve_one_baseline)
    (board,) = tables.build_leaderboards(tables.load_runs(results))
    rows = {r["label"]: r for r in board.table.to_dicts()}
    starved = rows["baseline (contended)"]
    assert starved["contended"] and starved["rank"] is None and starved["seeds"] == 1
    assert rows["baseline"]["seeds"] == 1 and not rows["baseline"]["contended"] and rows["baseline"]["rank"]
    assert board.table["label"].to_list()[-1] == "baseline (contended)"
    # A looser threshold (the probe is 50% below the median, not more than 60%) ranks it again.
    (lenient,) = tables.build_leaderboards(tables.load_runs(results), contended_fraction=0.6)
    assert {r["label"] for r in lenient.table.to_dicts()} == {"baseline", "mla:gqa_latent64", "depth_recurrence"}
    out = tmp_path / "report" / "index.html"
    assert harness_main("report", "--results-dir", str(results), "--out", str(out)).returncode == 0
    assert "contended (probe 50% below the median)" in out.read_text()


def test_runs_that_depart_from_the_budget_or_its_data_never_share_a_leaderboard(smoke_results, tmp_path):
    def depart(record):
        if record["variant"] == "baseline":
            record["overrides"] = []  # as if under the plain budget
        elif record["variant"] == "depth_recurrence":
            record["dataset_hash"] = "0" * 64  # other data under the same budget name (other text, too: the
            record["dataset_text_hash"] = "1" * 64  # same text in another tokenization would share the board)
    results = copy_results(smoke_results, tmp_path / "r", depart)
    boards = tables.build_leaderboards(tables.load_runs(results))
    assert sorted(b.table["label"].to_list()[0] for b in boards) == ["baseline", "depth_recurrence", "mla:gqa_latent64"]
    plain = next(b for b in boards if b.table["label"].to_list() == ["baseline"])
    capped = next(b for b in boards if b.table["label"].to_list() == ["mla:gqa_latent64"])
    assert plain.overrides == "" and capped.overrides == "max_steps 20000→3"
    assert capped.dataset == plain.dataset and capped.baseline_key is None
    out = tmp_path / "report.md"
    assert harness_main("report", "--results-dir", str(results), "--format", "md", "--out", str(out)).returncode == 0
    assert "Overrides: max_steps 20000→3." in out.read_text()


def test_failed_and_diverged_runs_are_counted_not_scored(smoke_results, tmp_path):
    def break_one_baseline(record):
        if record["variant"] == "baseline" and record["seed"] == 2:
            record.update(status="diverged", val_bpb_post_quant=None, val_loss_post_quant=None, val_bpb=None)
    results = copy_results(smoke_results, tmp_path / "r", break_one_baseline)
    (board,) = tables.build_leaderboards(tables.load_runs(results))
    base = board.table.filter(pl.col("variant") == "baseline").row(0, named=True)
    assert (base["runs"], base["seeds"], base["ok"], base["diverged"]) == (2, 1, 1, 1)
    assert base["bpb_std"] is None
    others = board.table.filter(pl.col("variant") != "baseline")
    assert others["p_value"].to_list() == [None, None]  # one baseline seed: no test, not a fake p


def test_pareto_front_keeps_only_undominated_points():
    points = [(1.0, 3.0), (2.0, 2.0), (3.0, 2.5), (4.0, 1.0), (2.5, 2.0)]
    assert sorted(plots.pareto_front(points)) == [0, 1, 3]
    assert sorted(plots.pareto_front(points, maximize_x=True)) == [3]


def test_report_command_writes_page_run_pages_and_exports(smoke_results, tmp_path):
    out = tmp_path / "site" / "index.html"
    done = harness_cli("report", "--results-dir", str(smoke_results), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert out.exists() and len(list((out.parent / "runs").glob("*.html"))) == 6
    page = out.read_text()
    assert "<script>window.__injected" not in page and "&lt;script&gt;window.__injected" in page
    assert '<img src="https://example.com' not in page
    board = pl.read_parquet(out.parent / "leaderboard.parquet")
    assert board.sort("label")["label"].to_list() == ["baseline", "depth_recurrence", "mla:gqa_latent64"]
    assert pl.read_csv(out.parent / "leaderboard.csv")["seeds"].to_list() == [2, 2, 2]
    noted = next(p for p in (out.parent / "runs").glob("*mla*.html") if "injected" in p.read_text())
    assert "<script>window" not in noted.read_text() and "&lt;script&gt;window.__injected" in noted.read_text()


def test_markdown_summary_lists_every_configuration(smoke_results):
    done = harness_cli("report", "--results-dir", str(smoke_results), "--format", "md", "--variant", "baseline,mla")
    assert done.returncode == 0, done.stderr
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("| ")]
    assert len(lines) == 3 and "**baseline**" in done.stdout and "mla:gqa_latent64" in done.stdout
    assert "depth_recurrence" not in done.stdout and "bpb (measured" in done.stdout


@pytest.mark.parametrize("args,fragment", [
    (["--budget", "10min"], "--budget '10min' matches no run record; recorded: smoke"),
    (["--variant", "nope"], "--variant 'nope' matches no run record"),
    (["--out", "report.txt"], "should end in .html"),
])
def test_report_mistakes_are_one_line_errors(smoke_results, args, fragment):
    done = harness_main("report", "--results-dir", str(smoke_results), *args)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and fragment in done.stderr, done.stderr


def test_report_on_an_empty_folder_says_how_to_make_a_run(tmp_path):
    done = harness_main("report", "--results-dir", str(tmp_path))
    assert done.returncode == 2 and "no run records" in done.stderr and "--budget smoke" in done.stderr


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


# Every inline SVG on a page: the series it says it draws, its legends' entries (each entry's lines joined) and
# whether each legend lies inside the drawing (a legend floating outside its figure is cut off or overlaps).
PLOTS_JS = """() => Array.from(document.querySelectorAll("svg")).map(function (svg) {
  var box = svg.getBoundingClientRect();
  var legends = Array.from(svg.querySelectorAll('g[id^="legend"]'));
  return {
    series: svg.dataset.series === undefined ? null : JSON.parse(svg.dataset.series),
    legend: legends.flatMap(function (g) {
      return Array.from(g.querySelectorAll('g[id^="text"]')).map(function (t) {
        return Array.from(t.querySelectorAll("text")).map(function (x) { return x.textContent.trim(); }).join(" ");
      });
    }),
    inside: legends.every(function (g) {
      var b = g.getBoundingClientRect();
      return b.left >= box.left - 1 && b.right <= box.right + 1 && b.top >= box.top - 1 && b.bottom <= box.bottom + 1;
    })
  };
})"""
LEGEND_TITLES = {"configuration (median run)"}


def check_plots(page, where: str) -> int:
    """Each plot names what it draws, and its legend lists exactly that, inside the figure. Returns the count."""
    plotted = page.evaluate(PLOTS_JS)
    for n, svg in enumerate(plotted):
        assert svg["series"], f"{where}: plot {n} does not say what it draws"
        assert sorted(svg["series"]) == sorted(set(svg["legend"]) - LEGEND_TITLES), (where, n, svg)
        assert svg["inside"], f"{where}: plot {n}'s legend lies outside the figure"
    return len(plotted)


def test_report_works_in_headless_chromium(smoke_results, tmp_path):
    executable = chromium_path()
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium package")
        pytest.skip("chromium is not installed here (apt-get install chromium); CI runs this test")
    sync_api = pytest.importorskip("playwright.sync_api")
    out = tmp_path / "site" / "index.html"
    assert harness_cli("report", "--results-dir", str(smoke_results), "--out", str(out)).returncode == 0
    from harness.report import build_report

    def tag(record):  # the same runs, as a sweep's and a study's members
        if record["variant"] == "mla":
            record["sweep"] = {"name": "mla-latent", "params": {"kv_latent_dim": 64, "seed": record["seed"]}}
        if record["variant"] == "depth_recurrence":
            record["study"] = {"name": "dr-study", "trial": record["seed"], "params": {"matrix_lr": 0.01}}
    tagged = copy_results(smoke_results, tmp_path / "tagged", tag)
    sweep_page = build_report(tagged, tmp_path / "site" / "mla-latent.html", sweep="mla-latent").index
    study_page = build_report(tagged, tmp_path / "site" / "dr-study.html", study="dr-study").index
    problems, foreign = [], []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("request", lambda r: None if r.url.startswith(("file://", "data:")) else foreign.append(r.url))
        page.goto(out.as_uri())
        page.wait_for_load_state("load")
        table = page.locator("#board-0-table")
        assert table.locator("tbody tr").count() == 3
        assert page.locator("section#board-0 figure svg").count() == 4  # three Pareto fronts, the curves
        assert check_plots(page, "main page") == 4

        def column(index: int) -> list[float]:
            cells = table.locator(f"tbody tr td:nth-child({index + 1})").all()
            return [float(c.get_attribute("data-v")) for c in cells]

        bpb_column = next(i for i, h in enumerate(table.locator("th").all_inner_texts()) if h.strip() == "val_bpb")
        header = table.locator("th").nth(bpb_column)
        header.click()
        assert header.get_attribute("aria-sort") == "ascending" and column(bpb_column) == sorted(column(bpb_column))
        header.click()
        assert column(bpb_column) == sorted(column(bpb_column), reverse=True)
        assert page.evaluate("typeof window.__injected") == "undefined"
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)

        run_page = next(p for p in (out.parent / "runs").glob("*mla*.html") if "injected" in p.read_text())
        page.goto(run_page.as_uri())
        assert INJECTED.split(">")[0] + ">" in page.locator("body").inner_text()  # shown as text, not run
        assert page.evaluate("typeof window.__injected") == "undefined"
        assert check_plots(page, "run page") == 2  # val_bpb; train loss (and the learning rate where recorded)
        for built, kind, section in ((sweep_page, "sweep", "sweeps"), (study_page, "study", "studies")):
            page.goto(built.as_uri())
            page.wait_for_load_state("load")
            assert page.locator(f"section#{section} h3").count() == 1
            assert check_plots(page, f"{kind} page") >= 4
        browser.close()
    assert problems == [] and foreign == []
    assert (tmp_path / "report.png").stat().st_size > 20_000


def test_sweep_and_study_records_get_their_own_sections(smoke_results, tmp_path):
    def tag(record):
        if record["variant"] == "mla":
            record["sweep"] = {"name": "mla-latent", "params": {"kv_latent_dim": 64, "seed": record["seed"]}}
        if record["variant"] == "depth_recurrence":
            record["study"] = {"name": "dr-study", "trial": record["seed"],
                               "params": {"matrix_lr": 0.01 * record["seed"]}}
    results = copy_results(smoke_results, tmp_path / "r", tag)
    out = tmp_path / "site" / "index.html"
    assert harness_cli("report", "--results-dir", str(results), "--out", str(out)).returncode == 0
    page = out.read_text()
    sweeps = page[page.index('<section id="sweeps">'):page.index('<section id="studies">')]
    assert "sweep mla-latent (2 runs)" in sweeps and sweeps.count("<svg") == 2  # kv_latent_dim, seed
    studies = page[page.index('<section id="studies">'):page.index('<section id="runs">')]
    assert "study dr-study (2 runs)" in studies and studies.count("<svg") == 3  # history, size front, matrix_lr


def test_a_run_page_shows_expert_metrics_as_a_table_by_layer():
    from harness.report import render

    metrics = {f"layer{layer}.expert_load.{e}": [0.1, 0.2, 0.3, 0.4][(e + layer) % 4]
               for layer in range(2) for e in range(4)}
    metrics.update({"layer0.router_entropy": 1.25, "layer1.router_entropy": 0.5, "layer0.experts_per_token": 2.0,
                    "layer1.experts_per_token": 1.5, "experts_per_token": 1.75, "sparse_compute_fraction": 0.4375})
    page = render.run_page({"run_id": "moe-run", "variant": "moe", "status": "ok", "variant_metrics": metrics},
                           None, "../index.html")
    table = page[page.index('<table class="sortable" id="experts">'):]
    table = table[:table.index("</table>")]
    headers = ["layer", "expert 0", "expert 1", "expert 2", "expert 3", "router entropy", "experts/token"]
    assert all(f">{h}</th>" in table for h in headers)
    assert table.count("<tr>") == 3  # the header and one row per layer
    assert '<td class="t" data-v="1">1</td><td data-v="0.2">0.2000</td>' in table
    assert '<td data-v="1.25">1.2500</td><td data-v="2.0">2.0000</td></tr>' in table
    assert "variant metric: layer0" not in page  # the table replaces the per-key lines ...
    assert "variant metric: experts_per_token" in page and "variant metric: sparse_compute_fraction" in page
    plain = render.run_page({"run_id": "act", "variant": "ut_act", "variant_metrics": {"mean_steps_per_token": 3.5}},
                            None, "../index.html")
    assert 'id="experts"' not in plain and "variant metric: mean_steps_per_token" in plain


def test_seeds_are_distinct_seeds_and_repeated_runs_of_one_seed_say_so(smoke_results, tmp_path):
    def repeat_seed_one(record):
        if record["variant"] == "mla":
            record["seed"] = 1  # two runs of one seed: the machine's noise, not two seeds
    results = copy_results(smoke_results, tmp_path / "r", repeat_seed_one)
    (board,) = tables.build_leaderboards(tables.load_runs(results))
    rows = {r["label"]: r for r in board.rows}
    assert (rows["mla:gqa_latent64"]["seeds"], rows["mla:gqa_latent64"]["scored_runs"]) == (1, 2)
    assert tables.seeds_text(rows["mla:gqa_latent64"]) == "1 seed, 2 runs"
    assert tables.seeds_text(rows["baseline"]) == "2"
    from harness.report import render

    html = "".join(render.leaderboard_rows(board))
    assert ">1 seed, 2 runs</td>" in html and "seed repeated: ± and p measure run-to-run noise" in html
    assert "| 1 seed, 2 runs |" in render.markdown([board])


def svg_series_and_legend(svg: str) -> tuple[list[str], list[str]]:
    """What an SVG says it draws (data-series) and the texts of its legends' entries (each entry's lines
    joined), from the SVG text the way the browser test reads the DOM."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    entries = []
    for legend in root.iter(f"{ns}g"):
        if legend.get("id", "").startswith("legend"):
            for group in legend.iter(f"{ns}g"):
                if group.get("id", "").startswith("text"):
                    entries.append(" ".join("".join(t.itertext()).strip() for t in group.iter(f"{ns}text")))
    return json.loads(root.get("data-series")), entries


def test_every_plotted_series_has_a_legend_entry_and_nothing_else_does():
    rows = [{"label": f"eigenweight rank={r} matrix_lr=0.04 embed_lr=0.6 +mtp", "variant": "eigenweight",
             "techniques": "mtp", "bpb_mean": 3.0 - r / 1000, "bpb_std": 0.01, "artifact_total_bytes": 1000 * r,
             "stored_param_count": 150_000 + 1000 * r} for r in (32, 64, 96)]
    curve = [{"step": s, "seconds": s * 0.5, "tokens": s * 4096, "train_loss": 6 - s / 10} for s in range(1, 9)]
    curve[-1]["val_bpb"] = 3.3
    svgs = [
        plots.pareto_plot(rows, "artifact_total_bytes", "bytes", cap=16_000_000, log_x=True),  # no baseline here
        plots.pareto_plot(rows, "stored_param_count", "stored parameters", log_x=True),
        plots.learning_curves([{"label": r["label"], "baseline": False, "curve": curve, "final": None}
                               for r in rows]),
        plots.parameter_plot([{"rank": r, "val_bpb_post_quant": 3 - r / 1000} for r in (32, 64)], "rank"),
        plots.history_plot([{"trial": t, "val_bpb_post_quant": 3 - t / 10, "pruned_bpb": None} for t in range(3)]),
        plots.importance_plot({"rank": 0.7, "matrix_lr": 0.3}, trials=3),
    ]
    for svg in svgs:
        series, legend = svg_series_and_legend(svg)
        assert series and sorted(series) == sorted(set(legend) - {"configuration (median run)"}), (series, legend)
    curves_series, _ = svg_series_and_legend(svgs[2])
    assert curves_series == [r["label"] for r in rows]  # labelled by configuration, as the table's rows
    assert "baseline" not in svg_series_and_legend(svgs[0])[0]


def tick_labels(svg_axis) -> list[str]:
    svg_axis.figure.canvas.draw()
    return [t.get_text() for t, loc in zip(svg_axis.get_ticklabels(), svg_axis.get_ticklocs())
            if t.get_text() and svg_axis.get_view_interval()[0] <= loc <= svg_axis.get_view_interval()[1]]


@pytest.mark.parametrize("values,log", [([150_000, 190_000], True), ([2_000, 300_000], True), ([1e5, 1e9], True),
                                        ([1, 2], False), ([32, 64, 96], False)])
def test_axes_have_two_or_more_labels_and_integers_never_get_halves(values, log):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.7, 3.5))
    ax.plot(values, [1.0] * len(values), "o")
    plots.scale_axis(ax, "x", [float(v) for v in values], log)
    labels = tick_labels(ax.xaxis)
    locations = [loc for loc in ax.xaxis.get_ticklocs() if ax.get_xlim()[0] <= loc <= ax.get_xlim()[1]]
    plt.close(fig)
    assert 2 <= len(labels) <= 9, labels
    if not log:
        assert all(float(loc).is_integer() for loc in locations), locations


def test_a_small_study_s_importances_carry_a_caution(smoke_results, tmp_path):
    from harness.report import grouped_section

    def tag(record):
        record["study"] = {"name": "s", "trial": record["seed"] + (10 if record["variant"] == "mla" else 0),
                           "params": {"matrix_lr": 0.01 * record["seed"]}, "objectives": ["val_bpb"],
                           "distributions": {"matrix_lr": json.dumps({"name": "FloatDistribution", "attributes": {
                               "low": 0.001, "high": 0.1, "log": True, "step": None}})}}
    results = copy_results(smoke_results, tmp_path / "r", tag)
    section = grouped_section(tables.load_runs(results), "study")
    assert "Caution: from only 6 completed trials" in section


def test_a_sweep_page_and_a_study_page_hold_only_their_members(smoke_results, tmp_path):
    from harness.report import build_report

    def tag(record):
        if record["variant"] == "mla":
            record["sweep"] = {"name": "mla-latent", "params": {"kv_latent_dim": 64}}
        if record["variant"] == "depth_recurrence":
            record["study"] = {"name": "dr-study", "trial": record["seed"], "params": {"matrix_lr": 0.01}}
    results = copy_results(smoke_results, tmp_path / "r", tag)
    for kind, name, variant in (("sweep", "mla-latent", "mla"), ("study", "dr-study", "depth_recurrence")):
        out = tmp_path / "reports" / f"{name}.html"
        built = build_report(results, out, **{kind: name})
        page = out.read_text()
        members = [r["run_id"] for r in records_of(results) if r["variant"] == variant]
        assert built.runs == 2 and all(m in page for m in members)
        assert not any(r["run_id"] in page for r in records_of(results) if r["variant"] != variant)
        assert f"<h1>{kind} {name}</h1>" in page
    with pytest.raises(UserError, match="--sweep 'nope' matches no run record; recorded: mla-latent"):
        build_report(results, tmp_path / "reports" / "x.html", sweep="nope")


def test_a_run_page_plots_its_curve_and_the_learning_rate_where_recorded(tmp_path):
    from harness.report import render

    curve = [{"step": s, "seconds": 0.1 * s, "tokens": 4096 * s, "train_loss": 7 - s / 500,
              "lr": 0.04 * min(1, s / 100), "lr_scale": min(1, s / 100), "grad_norm": 1.0,
              "tokens_per_second": 40960.0} for s in range(1, 2001)]
    for point in curve[::500]:
        point.update(val_loss=5.0, val_bpb=3.0 - point["step"] / 10_000)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "curve.jsonl").write_text("".join(json.dumps(c) + "\n" for c in curve) + '{"step": 20')  # torn tail
    running = render.run_page({"run_id": "r", "variant": "baseline", "status": "running"}, run_dir, "../index.html")
    svgs = [running[i:running.index("</svg>", i)] + "</svg>" for i in range(len(running))
            if running.startswith("<svg", i)]
    assert len(svgs) == 2 and "curve.jsonl" in running
    val, loss = (svg_series_and_legend(svg) for svg in svgs)
    assert val[0] == ["val_bpb (validation during training)"] and loss[0] == [
        "train loss (nats)", "learning rate (matrix/Muon, as applied)"]
    assert all(sorted(series) == sorted(legend) for series, legend in (val, loss))
    assert svgs[1].count("<circle") == 0 and len(svgs[1]) < 40_000  # thinned to a few hundred points
    old = [{k: c[k] for k in ("step", "seconds", "tokens", "train_loss")} for c in curve[:300]]
    finished = render.run_page({"run_id": "r", "variant": "baseline", "status": "ok", "curve": old}, None, "../x")
    assert "learning rate" not in finished and "train loss (nats)" in finished  # old records: no LR axis


def test_a_long_build_says_how_far_it_got_on_stderr_and_a_short_one_says_nothing(smoke_results, tmp_path):
    import io

    from harness.report import Progress, build_report

    loud, silent = io.StringIO(), io.StringIO()
    build_report(smoke_results, tmp_path / "a" / "index.html", progress=Progress(after_seconds=0, stream=loud))
    build_report(smoke_results, tmp_path / "b" / "index.html", progress=Progress(stream=silent))
    assert "report: read 6 records" in loud.getvalue() and "run pages" in loud.getvalue()
    assert silent.getvalue() == ""
