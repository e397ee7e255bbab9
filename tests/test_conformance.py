"""Every registered family, at its defaults and at every preset, honours the plugin contract (tiny sizes, CPU)."""

import json
import math
import os
import subprocess
import sys

import conformance as cf
import pytest
import torch

from conftest import REPO
from harness.registry import get_variant

CONFIGS = cf.all_configs()
IDS = [cf.config_id(*config) for config in CONFIGS]


@pytest.fixture(params=CONFIGS, ids=IDS)
def tiny_model(request):
    name, preset, changes = request.param
    variant, config = cf.tiny(name, preset, **changes)
    return variant, config, cf.build(variant, config)


def test_logits_are_finite_and_shaped(tiny_model):
    _, config, model = tiny_model
    assert cf.shape_problems(model, config) == []


def test_evaluation_metrics_are_finite_numbers(tiny_model):
    """What metrics() reports after an evaluation goes into the record: plain finite floats, counted afresh."""
    from harness import hooks

    _, config, model = tiny_model
    model.eval()
    cf.logits_of(model, cf.random_tokens(config))
    first = hooks.metrics(model)
    cf.logits_of(model, cf.random_tokens(config, seed=1))
    model.train()
    model.eval()
    cf.logits_of(model, cf.random_tokens(config))
    assert all(isinstance(v, float) and math.isfinite(v) for v in first.values()), first
    assert hooks.metrics(model) == first  # a new evaluation starts its counts from zero
    model.train()


def test_logits_never_see_the_future(tiny_model):
    _, config, model = tiny_model
    assert cf.causality_problems(model, config) == []


def test_causality_check_catches_a_leaky_variant():
    variant, config = cf.tiny(str(cf.FIXTURES / "cheaters" / "next_token_leak.py"))
    assert cf.causality_problems(cf.build(variant, config), config)


def test_logits_at_t_predict_token_t_plus_1(tiny_model):
    _, config, model = tiny_model
    target = 0.25 * math.log(config.vocab_size)
    loss = cf.alignment_loss(model, config, stop_below=target)
    assert loss < target, f"copy task loss {loss:.3f} nats after training"


def test_alignment_check_catches_a_variant_shifted_by_one_position():
    variant, config = cf.tiny(str(cf.FIXTURES / "cheaters" / "two_ahead.py"))
    assert cf.alignment_loss(cf.build(variant, config), config) > 0.75 * math.log(config.vocab_size)


def test_loss_falls_on_a_fixed_batch(tiny_model):
    _, config, model = tiny_model
    batch = cf.copy_pairs(config, 8, seed=5)
    losses = cf.train(model, config, [batch] * 8)
    assert cf.finite(losses) and min(losses[-3:]) < losses[0] - 0.05, f"losses {losses}"


def test_artifact_round_trip_rebuilds_the_model_from_stored_bytes(tiny_model):
    variant, config, model = tiny_model
    cf.train(model, config, [cf.copy_pairs(config, 8, seed=s) for s in range(3)])  # move zero-init weights
    assert cf.round_trip_problems(model, variant, config) == []


def test_training_only_parts_are_dropped_from_the_artifact_and_the_score():
    variant, config = cf.tiny(str(cf.FIXTURES / "aux_head_variant.py"))
    model = cf.build(variant, config)
    cf.train(model, config, [cf.copy_pairs(config, 8, seed=s) for s in range(3)])
    from harness import hooks
    from harness.metric import ScoredModel

    assert not any(k.startswith("aux_head.") for k in hooks.exported_state(model))
    assert cf.round_trip_problems(model, variant, config) == []
    x, y = cf.copy_pairs(config, 4, seed=9)
    scored = ScoredModel(model)
    scored.train()
    _, aux_train = scored(x, y)
    scored.eval()
    _, aux_eval = scored(x, y, train=False)
    assert aux_train.item() > 0 and aux_eval.item() == 0


def test_seeded_cpu_training_is_reproducible(tiny_model):
    variant, config, _ = tiny_model
    runs = []
    for _ in range(2):
        model = cf.build(variant, config, seed=7)
        losses = cf.train(model, config, [cf.copy_pairs(config, 4, seed=s) for s in range(3)])
        runs.append((losses, {k: v.clone() for k, v in model.state_dict().items()}))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])


@pytest.mark.parametrize("name", sorted({config[0] for config in CONFIGS}))
def test_show_reports_measured_sizes(name):
    from harness import artifact, hooks

    variant, config = cf.tiny(name)
    model = cf.build(variant, config)
    state = hooks.exported_state(model)
    blob = artifact.compress(state)
    size = artifact.measure(blob, artifact.model_source_files(model, variant.source_file))
    assert size.model_bytes == len(blob) and size.code_bytes > 0
    assert str(variant.source_file) in size.code_files
    assert artifact.stored_numel(artifact.decompress(blob)) == artifact.stored_numel(state) > 0


def test_one_ddp_step_matches_a_single_process_step_for_every_family(tmp_path):
    out = tmp_path / "ddp.json"
    # The script runs from tests/: put this checkout's harness first, whatever copy is installed.
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", "29517", str(REPO / "tests" / "ddp_conformance.py"), str(out)],
                            cwd=REPO / "tests", env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    problems = json.loads(out.read_text())
    assert set(problems) == set(IDS)
    assert {k: v for k, v in problems.items() if v} == {}


def test_every_family_is_listed_with_its_presets():
    from conftest import harness_main

    result = harness_main("list")
    assert result.returncode == 0, result.stderr
    for name in sorted({config[0] for config in CONFIGS}):
        variant, _ = get_variant(name)
        assert variant.doc.strip().splitlines()[0] in result.stdout
        for preset in variant.presets:
            assert f"preset {name}:{preset}" in result.stdout


def test_show_counts_what_eigenweight_stores_at_full_size():
    """r·(m + n + 1) numbers per block matrix, plus the embedding and the small tensors: nothing else."""
    from conftest import harness_main

    result = harness_main("show", "eigenweight:r64", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    dim, kv, hidden, r, layers = 512, 256, 1024, 64, 9
    matrices = [(dim, dim), (kv, dim), (kv, dim), (dim, dim), (hidden, dim), (dim, hidden)]
    per_layer = sum(r * (m + n + 1) for m, n in matrices) + 2 * dim + 2 * dim + 8  # scales, resid mix, q gain
    expected = layers * per_layer + 1024 * dim + (layers // 2) * dim  # tied embedding, U-Net skip weights
    assert info["stored_param_count"] == info["param_count"] == expected
    assert info["sources"]["rank"] == "preset" and info["sources"]["model_dim"] == "default"
    assert 0 < info["artifact_model_bytes_at_init"] < 16_000_000


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_a_training_step_runs_under_the_challenges_precision(config):
    """bf16 embeddings and RoPE tables, fp32 matrices, bf16 autocast (the default on CUDA): every family's
    forward, backward and optimizer step must take the mixed dtypes."""
    from harness.metric import ScoredModel
    from harness.optim import build_optimizers
    from harness.train import accumulate, build_model

    name, preset, changes = config
    variant, c = cf.tiny(name, preset, **changes)
    model = build_model(variant, c, 0, torch.device("cpu"), "challenge")
    optimizers, _ = build_optimizers(model, c, fused=False, muon_dtype=torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = cf.copy_pairs(c, 2, seed=1)
    loss = accumulate(ScoredModel(model), model, [(x, y)], 1, 1, torch.device("cpu"), torch.bfloat16)
    for opt in optimizers:
        opt.step()
    assert math.isfinite(loss.item())
    after = model.state_dict()
    assert all(after[k].dtype == before[k].dtype for k in before)
    assert any(not torch.equal(after[k], before[k]) for k in before)
