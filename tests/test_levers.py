"""The challenge's levers as axes of a run: trainer options (Muon and Adam weight decay, the min-LR floor, late
QAT), run ids and labels, the shared record-stack preset and another tokenization of the budget's data. The
schemes themselves are tested in test_export_schemes.py and test_eval_schemes.py, and a run on all three (late
QAT, an export and an eval scheme) end to end, exported and reproduced, in test_submission_export.py."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import harness_main, write_budget
from harness import artifact
from harness.budget import load_budget, with_dataset
from harness.config import as_dict
from harness.errors import UserError
from harness.model import GPT, RECORD_STACK, GPTConfig
from harness.optim import Muon
from harness.qat import LateQAT
from harness.registry import get_variant
from harness.runspec import RunSpec, hashed_config
from harness.train import warmdown_scale
from harness.tune.space import TRAINER_SPACE, Float, parse_search


def test_muon_weight_decay_shrinks_the_weights_by_lr_times_decay_before_the_update():
    w = torch.nn.Parameter(torch.full((4, 4), 2.0))
    w.grad = torch.zeros(4, 4)  # a zero gradient orthogonalises to a zero update: only the decay acts
    Muon([w], lr=0.5, momentum=0.9, backend_steps=1, dtype=torch.float32, weight_decay=0.1).step()
    assert torch.allclose(w, torch.full((4, 4), 2.0 * (1 - 0.5 * 0.1)))
    v = torch.nn.Parameter(torch.full((4, 4), 2.0))
    v.grad = torch.zeros(4, 4)
    Muon([v], lr=0.5, momentum=0.9, backend_steps=1, dtype=torch.float32).step()
    assert torch.equal(v.detach(), torch.full((4, 4), 2.0))  # off by default: the baseline's optimizer


def test_the_warmdown_stops_at_the_min_lr_floor():
    steps = [warmdown_scale(s, 0.0, 1e9, 100, 50) for s in (0, 50, 75, 99, 100)]
    assert steps == [1.0, 1.0, 0.5, 0.02, 0.0]
    floored = [warmdown_scale(s, 0.0, 1e9, 100, 50, min_lr=0.1) for s in (0, 75, 99, 100)]
    assert floored == [1.0, 0.5, 0.1, 0.1]
    assert warmdown_scale(10, 0.0, 1e9, 100, 0, min_lr=0.1) == 1.0  # no warmdown: flat


def test_late_qat_trains_on_the_exported_weights_and_gives_the_full_precision_ones_back():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, num_layers=1, model_dim=256, num_heads=2, num_kv_heads=1))
    qat = LateQAT(model, "int6-zstd", 0.15)
    assert qat.params and all(p.ndim == 2 for p in qat.params.values())
    assert not qat.active(0.2) and qat.active(0.1) and not LateQAT(model, "int6-zstd", 0.0).active(0.0)
    before = {k: p.detach().clone() for k, p in qat.params.items()}
    qat.quantise()
    exported = artifact.decompress(artifact.compress({k: v for k, v in before.items()}, "int6-zstd"))
    for k, p in qat.params.items():  # the forward sees what the artifact will hold, value for value
        assert torch.equal(p.detach(), exported[k].to(p.dtype)), k
    qat.restore()
    assert all(torch.equal(p.detach(), before[k]) for k, p in qat.params.items()) and qat.steps == 1


def test_record_stack_is_a_preset_of_every_family():
    mla, _ = get_variant("mla")
    config = mla.resolve("record-stack")
    assert {k: getattr(config, k) for k in RECORD_STACK} == RECORD_STACK
    assert "record-stack" in get_variant("baseline")[0].presets  # tested with baseline's own presets
    with pytest.raises(UserError, match="record-stack"):
        mla.resolve("record-stak")


def test_another_tokenization_keeps_the_contract_and_the_vocabulary_follows():
    smoke = load_budget("smoke")
    b = with_dataset(smoke, "builtin_sp4096")
    assert (b.dataset, b.model["vocab_size"]) == ("builtin_sp4096", 4096)
    assert dataclasses.replace(b, dataset=smoke.dataset, model=smoke.model) == smoke
    assert with_dataset(smoke, "fineweb").model["vocab_size"] == 1024
    with pytest.raises(UserError, match="--dataset"):
        with_dataset(smoke, "../elsewhere")


def test_trainer_levers_are_search_space_entries_by_name():
    assert parse_search(GPTConfig, "muon_weight_decay") == ("muon_weight_decay", TRAINER_SPACE["muon_weight_decay"])
    assert parse_search(GPTConfig, "min_lr=0.05..0.2") == ("min_lr", Float(0.05, 0.2))
    with pytest.raises(UserError, match="bare name"):
        parse_search(GPTConfig, "matrix_lr")


def test_axes_at_their_defaults_keep_run_ids_and_other_values_name_the_run(tmp_path):
    variant, _ = get_variant("baseline")
    budget = load_budget("smoke")
    plain = RunSpec(variant=variant, config=variant.resolve(), budget=budget)
    assert hashed_config(as_dict(plain.config)) == hashed_config(as_dict(GPTConfig()))
    assert "export" not in hashed_config(as_dict(plain.config)) and plain.label() == "baseline"
    other = RunSpec(variant=variant, config=variant.resolve(None, None, {"export": "gptq-zstd", "eval": "sliding"}),
                    budget=budget)
    assert other.label() == "baseline-gptq-zstd-sliding" and other.config_hash() != plain.config_hash()


def test_eval_settings_that_do_not_fit_the_budget_are_refused_before_training(tmp_path):
    budget = write_budget(tmp_path / "tiny.toml")  # seq_len 64
    for flags, message in ((["--eval", "ttt", "--ttt-chunk-tokens", "100"], "not a multiple of seq_len 64"),
                           (["--eval", "sliding", "--eval-stride", "65"], "larger than seq_len 64")):
        done = harness_main("run", "--variant", "baseline", "--budget", str(budget), "--results-dir",
                            str(tmp_path / "r"), *flags)
        assert done.returncode == 2 and message in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert not (tmp_path / "r").exists()
