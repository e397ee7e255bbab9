"""torch.compile, the GPU path's check that runs here: every family and preset compiles as one graph on the CPU
and computes what it computes eagerly; every run compiles its own graphs, however many ran before it in
the process; a function that keeps recompiling fails the run with its reason.

What a cold inductor costs decides the shape of the check (about 8 s a graph on 2 cores). Every code structure
(`conformance.structure`: presets and options that differ from another only in sizes share one) is compiled as
one graph (Dynamo's capture, AOT autograd's joint graph) and run against eager. Inductor lowers and runs every
family's defaults; the presets and options with code paths of their own go through AOT autograd's eager
backend (the same captured graphs, run without inductor's kernels): with 25 families, lowering all of them
would cost the suite several minutes. Inductor's C++ kernels
are generated scalar (`cpp.simdlen = 1`): the check is of what the GPU path shares with the CPU's, and scalar
kernels compile 15% faster. The evaluation graph is compiled where evaluation runs other code than training:
weights generated from a generator (read from a cache filled outside the graph), and, at the family's
defaults, models that keep evaluation statistics; the harness's own evaluation graph is compiled by the real
runs below."""

import math

import conformance as cf
import pytest
import torch

from conftest import REPO, harness_main, only_record, write_budget
from harness import compilation, hooks
from harness.metric import ScoredModel
from harness.train import RunSpec, accumulate, run

_STRUCTURES: dict[tuple, tuple] = {}  # one configuration per code structure: sizes do not change the graph's kind
for _config in cf.all_configs():
    _STRUCTURES.setdefault(cf.structure(*cf.compile_size(*_config[:2], **_config[2])), _config)
CONFIGS = list(_STRUCTURES.values())
INDUCTOR = {cf.config_id(name, None, {}) for name, preset, changes in CONFIGS if preset is None and not changes}


@pytest.fixture(scope="module", autouse=True)
def scalar_kernels_and_a_clean_dynamo_after():
    import torch._inductor.config as inductor

    simdlen, inductor.cpp.simdlen = inductor.cpp.simdlen, 1
    yield
    inductor.cpp.simdlen = simdlen
    compilation.start(False)


def evaluation_differs(model, backend: str) -> bool:
    """Generated weights are read from a cache in evaluation: always its own graph. A model that keeps evaluation
    statistics compiles its evaluation graph under inductor (the family's defaults) only."""
    generated = any(isinstance(m, hooks.GeneratedWeights) for m in model.modules())
    return generated or (hasattr(model, "metrics") and backend == "inductor")


@pytest.mark.parametrize("config", CONFIGS, ids=[cf.config_id(*c) for c in CONFIGS])
def test_every_family_compiles_as_one_graph_and_matches_eager(config):
    name, preset, changes = config
    variant, c = cf.compile_size(name, preset, **changes)
    fullgraph = not variant.graph_breaks
    backend = "inductor" if cf.config_id(*config) in INDUCTOR else "aot_eager"
    x, y = cf.copy_pairs(c, 2, seed=0)
    losses = {}
    for compiled in (False, True):
        model = cf.build(variant, c)
        scored = ScoredModel(model)
        compilation.start(compiled)
        runner = compilation.compile_model(scored, fullgraph, backend) if compiled else scored
        train_loss = accumulate(runner, model, [(x, y)], 1, 1, torch.device("cpu"), None).item()
        eval_loss = None
        if evaluation_differs(model, backend):
            scored.eval()
            hooks.prepare_eval(scored)
            with torch.no_grad():
                eval_loss = runner(x, y, train=False)[0].item()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        losses[compiled] = (train_loss, eval_loss, grads)
    stats = compilation.stats(True, fullgraph)
    # A training graph and perhaps an evaluation graph, one recompile of ScoredModel.forward (train=False).
    assert stats["graphs"] >= 1 + (eval_loss is not None) and stats["recompiles"] <= 1, stats
    if fullgraph:
        assert stats["graph_breaks"] == 0, stats
    (eager_train, eager_eval, eager_grads), (train, evaluated, grads) = losses[False], losses[True]
    assert math.isclose(train, eager_train, rel_tol=1e-4)
    assert evaluated is None or math.isclose(evaluated, eager_eval, rel_tol=1e-4)
    assert grads.keys() == eager_grads.keys()
    worst = max((grads[k] - eager_grads[k]).abs().max().item() / (eager_grads[k].abs().max().item() + 1e-8)
                for k in grads)
    assert worst < 1e-3, f"compiled gradients differ from eager ones by {worst:.2e} (relative)"


def test_every_run_in_one_process_gets_its_own_graphs(tmp_path):
    """Five configurations trained one after another in one process (as a tune worker does): each run
    compiles from a clean state, so none reaches the recompile limit and trains uncompiled."""
    from harness.budget import load_budget
    from harness.registry import get_variant

    budget = load_budget(str(write_budget(tmp_path / "tiny.toml", val_tokens_cap=128, warmup_steps=1,
                                          train_wallclock_seconds=3600, model={"num_layers": 1})))
    variant, _ = get_variant("baseline")
    records = []
    # Five configurations of one shape (inductor's cache makes the later compiles cheap, Dynamo's state is what
    # matters here): before each run reset its own, the third on got no graph at all.
    for n, changes in enumerate([{}, {"matrix_lr": 0.02}, {"scalar_lr": 0.02}, {"muon_momentum": 0.9},
                                 {"warmdown_steps": 0}]):
        config = variant.resolve(None, budget.model, changes)
        records.append(run(RunSpec(variant=variant, config=config, budget=budget, seed=n, compile=True,
                                   max_steps=2, quiet=True, results_dir=tmp_path / "results")))
    for record in records:
        assert record["status"] == "ok"
        assert record["compile"]["graphs"] >= 2 and "forward" in record["compile"]["frames"], record["compile"]
        assert record["compile"]["graph_breaks"] == 0 and record["compile"]["compile_seconds"] > 0
        assert {o["name"] for o in record["overrides"]} == {"compile", "max_steps"}


def test_a_function_that_keeps_recompiling_fails_the_run_with_its_reason(tmp_path, monkeypatch):
    import torch._dynamo

    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 3)  # the limit is 8; 3 reaches it sooner
    # A long clock and a warm-up step: compiling the first graph must not use up the budget before step 2.
    budget = write_budget(tmp_path / "tiny.toml", val_tokens_cap=256, warmup_steps=1, train_wallclock_seconds=3600)
    result = harness_main("run", "--variant", str(REPO / "tests" / "fixtures" / "recompiling_variant.py"),
                          "--budget", str(budget), "--compile", "--max-steps", "20",
                          "--results-dir", str(tmp_path / "results"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "recompile limit (3)" in lines[0] and "Traceback" not in result.stderr, result.stderr
    record = only_record(tmp_path / "results")
    assert record["status"] == "failed" and "recompile limit" in record["error"]
    assert record["steps"] < 20  # stopped where the limit was reached, not trained on uncompiled


def test_an_undeclared_graph_break_stops_the_run_with_one_line(tmp_path):
    budget = write_budget(tmp_path / "tiny.toml", val_tokens_cap=256, warmup_steps=1)
    result = harness_main("run", "--variant", str(REPO / "tests" / "fixtures" / "graph_break_variant.py"),
                          "--budget", str(budget), "--compile", "--max-steps", "2",
                          "--results-dir", str(tmp_path / "results"))
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "does not compile as one graph" in result.stderr and "graph_breaks=" in result.stderr
    assert only_record(tmp_path / "results")["status"] == "failed"
