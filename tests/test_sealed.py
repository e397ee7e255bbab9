"""The score of record comes from a sealed process: the artifact rebuilt there reproduces the trained model's
logits and scores the same every time; a model that keeps anything outside the artifact, reads data, or
rewrites the harness cannot get an `ok` record; the sealed process trusts neither a changed harness file nor a
variant file that changed while the run used it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from test_cli_errors import assert_one_line_error

from conftest import REPO, harness_cli, harness_main, write_budget
from harness import artifact, hooks, integrity, sealed
from harness.budget import load_budget
from harness.data.datasets import resolve_dataset
from harness.metric import load_validation
from harness.registry import get_variant
from harness.runspec import RunSpec
from harness.train import submission_script_size

CHEATERS = REPO / "tests" / "fixtures" / "cheaters"


def only_record(results: Path) -> dict:
    (path,) = results.glob("*/run.json")
    return json.loads(path.read_text())


def test_the_score_of_record_is_the_sealed_processes_and_is_reproduced_from_the_artifact(tmp_path):
    budget = write_budget(tmp_path / "b.toml")
    done = harness_cli("run", "--variant", "baseline", "--budget", str(budget), "--max-steps", "3", "--quiet",
                       "--results-dir", str(tmp_path / "r"))
    assert done.returncode == 0, done.stderr
    record = only_record(tmp_path / "r")
    assert record["status"] == "ok"
    assert record["variant_sha256"] == hashlib.sha256((REPO / "variants" / "baseline.py").read_bytes()).hexdigest()
    assert len(record["code_sha256"]) == 64
    assert record["sealed"]["probe_diff"] <= sealed.PROBE_TOLERANCE * max(1.0, record["sealed"]["probe_scale"])
    assert record["artifact_total_bytes"] == record["artifact_model_bytes"] + record["artifact_code_bytes"]
    blob = next((tmp_path / "r").glob("*/model.int8.ptz")).read_bytes()
    assert record["artifact_model_bytes"] == len(blob)

    # The same artifact, rebuilt and scored again in another sealed process, scores exactly the same.
    variant, _ = get_variant("baseline")
    config = variant.resolve(None, None, record["config"])
    b = load_budget(str(budget))
    dataset = resolve_dataset("builtin", log=lambda message: None)
    val = load_validation(dataset.val_files, b.seq_len, b.val_tokens_cap, dataset.tokenizer.tables)
    model = artifact.restore(variant.construct, config, blob)
    probe = val.tokens[:2 * b.seq_len].long().view(2, b.seq_len)
    files = artifact.model_source_files(model, variant.source_file)
    script_bytes, _ = submission_script_size(RunSpec(variant=variant, config=config, budget=b, max_steps=3), files)
    again = sealed.round_trip(variant, config, blob, files, script_bytes=script_bytes,
                              counted=b.code_bytes, device=torch.device("cpu"), precision="fp32", probe_tokens=probe,
                              probe_logits=sealed.probe_logits(model, probe),
                              validation=sealed.Validation(tuple(map(str, dataset.val_files)), b.seq_len,
                                                           b.val_tokens_cap, dataset.tokenizer.tables,
                                                           b.tokens_per_step))
    assert again["val_bpb"] == pytest.approx(record["val_bpb_post_quant"], rel=1e-9)
    assert again["probe_diff"] == 0.0
    assert again["code_bytes"] == record["artifact_code_bytes"] and again["code_sha256"] == record["code_sha256"]


def test_state_kept_outside_the_artifact_fails_the_run_which_keeps_the_artifacts_own_score(tmp_path):
    budget = write_budget(tmp_path / "b.toml")
    done = harness_cli("run", "--variant", str(CHEATERS / "plain_tensor_state.py"), "--budget", str(budget),
                       "--max-steps", "4", "--results-dir", str(tmp_path / "r"))
    assert done.returncode == 1
    assert "gives other logits than the trained model" in done.stderr and "learnt_bias" in done.stderr
    record = only_record(tmp_path / "r")
    assert record["status"] == "failed" and "learnt_bias" in record["error"]
    assert record["val_bpb_post_quant"] > 0 and record["sealed"]["probe_diff"] > 1e-3


def test_a_plugin_that_reads_data_while_training_fails_the_run(tmp_path):
    budget = write_budget(tmp_path / "b.toml")
    done = harness_cli("run", "--variant", str(CHEATERS / "forward_reads_data.py"), "--budget", str(budget),
                       "--max-steps", "8", "--no-preflight", "--results-dir", str(tmp_path / "r"))
    assert done.returncode == 1
    record = only_record(tmp_path / "r")
    assert record["status"] == "failed"
    assert record["error"].startswith("the model opened ") and "_val_" in record["error"]


def test_a_plugin_that_rewrites_the_harness_gets_no_record_it_chose(tmp_path):
    budget = write_budget(tmp_path / "b.toml")
    plugin = str(CHEATERS / "patches_the_score.py")
    refused = harness_cli("run", "--variant", plugin, "--budget", str(budget), "--results-dir", str(tmp_path / "r"))
    assert refused.returncode == 2 and "preflight check 'harness integrity' failed" in refused.stderr
    assert not (tmp_path / "r").exists()
    done = harness_cli("run", "--variant", plugin, "--budget", str(budget), "--max-steps", "3", "--no-preflight",
                       "--results-dir", str(tmp_path / "r"))
    assert done.returncode == 1
    record = only_record(tmp_path / "r")
    assert record["status"] == "failed" and "harness.metric.evaluate was replaced" in record["error"]
    assert "val_bpb_post_quant" not in record


def test_run_refuses_a_build_over_the_budgets_time_limit(tmp_path):
    budget = write_budget(tmp_path / "b.toml", build_seconds_limit=1)
    result = harness_main("run", "--variant", str(CHEATERS / "slow_build.py"), "--budget", str(budget),
                          "--results-dir", str(tmp_path / "r"), env={"GOLF_SLOW_BUILD_SECONDS": "4"})
    assert_one_line_error(result, "preflight check 'build' failed", "build_seconds_limit of 1s")
    assert not (tmp_path / "r").exists()


PLUGIN = '''
from harness.model import GPT, GPTConfig
from harness.registry import register

register("sealed_probe_{tag}", config=GPTConfig, build=GPT)
'''


@pytest.fixture
def small_plugin(tmp_path, request):
    tag = request.node.name.replace("[", "_").replace("]", "").replace("-", "_")
    path = tmp_path / f"plugin_{tag}.py"  # a module name of its own: the registry loads a file once
    path.write_text(PLUGIN.format(tag=tag))
    variant, _ = get_variant(str(path))
    config = variant.resolve(None, None, {"vocab_size": 64, "model_dim": 32, "num_heads": 2, "num_kv_heads": 1,
                                          "num_layers": 1, "mlp_mult": 2})
    torch.manual_seed(0)
    model = variant.construct(config)
    blob = artifact.compress(hooks.exported_state(model))
    artifact.copy_tensors(model, artifact.restore(variant.construct, config, blob))  # the artifact's weights
    probe = torch.randint(0, 64, (1, 16))

    def trip():
        return sealed.round_trip(variant, config, blob, [path], counted="model", device=torch.device("cpu"),
                                 precision="fp32", probe_tokens=probe, probe_logits=sealed.probe_logits(model, probe))

    return path, trip


def test_the_sealed_process_rebuilds_a_plugin_from_outside_the_repository(small_plugin):
    path, trip = small_plugin
    result = trip()
    assert result["probe_diff"] == 0.0 and result["code_bytes"] == path.stat().st_size


def test_the_sealed_process_refuses_a_harness_file_changed_on_disk(small_plugin, monkeypatch):
    _, trip = small_plugin
    monkeypatch.setitem(integrity.FILE_HASHES, "metric.py", "0" * 64)
    with pytest.raises(sealed.SealedFailure, match="harness files changed on disk since the run started: metric.py"):
        trip()


def test_the_sealed_process_refuses_a_variant_file_changed_while_the_run_used_it(small_plugin):
    path, trip = small_plugin
    path.write_text(path.read_text() + "\n# trained with one file, counted with another\n")
    with pytest.raises(sealed.SealedFailure, match="changed while the run used it"):
        trip()
