import dataclasses
import json

import pytest
import torch

from harness.budget import budget_names, load_budget
from harness.cli import parse_config_flags
from harness.errors import UserError
from harness.model import GPT, GPTConfig
from harness.registry import get_variant


def test_shipped_budgets_load_and_keep_the_challenge_contract():
    assert {"smoke", "10min", "10min-8xh100", "4h", "synthetic"} <= set(budget_names())
    for name in budget_names():
        load_budget(name)
    ten = load_budget("10min")
    assert (ten.train_wallclock_seconds, ten.tokens_per_step, ten.seq_len, ten.artifact_cap_bytes) == (
        600, 524_288, 1024, 16_000_000)
    assert (ten.device, ten.device_count, ten.dataset, ten.val_tokens_cap) == ("cuda", 1, "fineweb", 0)
    assert load_budget("10min-8xh100").device_count == 8
    assert load_budget("4h").train_wallclock_seconds == 4 * 3600
    smoke = load_budget("smoke")
    assert smoke.device == "cpu" and smoke.dataset == "builtin" and smoke.train_wallclock_seconds <= 60


def test_budget_by_path_equals_budget_by_name():
    by_path = load_budget(str(load_budget("smoke").source))
    assert dataclasses.replace(by_path, source="") == dataclasses.replace(load_budget("smoke"), source="")


def test_baseline_defaults_are_the_challenge_baseline_with_17_06M_parameters():
    c = GPTConfig()
    assert (c.num_layers, c.model_dim, c.num_heads, c.num_kv_heads, c.mlp_mult, c.vocab_size) == (9, 512, 8, 4, 2, 1024)
    model = GPT(c)
    assert sum(p.numel() for p in model.parameters()) == 17_059_912
    assert model.tok_emb.weight.std().item() == pytest.approx(0.005, rel=0.05)
    assert all((b.attn.proj.weight == 0).all() and (b.mlp.proj.weight == 0).all() for b in model.blocks)
    assert torch.equal(model.blocks[0].attn.q_gain, torch.full((8,), 1.5))


def test_logits_are_soft_capped_and_never_see_the_future():
    torch.manual_seed(0)
    c = GPTConfig(num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1, logit_softcap=5.0)
    model = GPT(c)
    for p in model.parameters():  # zero-initialised projections would hide leaks: perturb everything
        torch.nn.init.normal_(p, std=0.5)
    x = torch.randint(0, 1024, (2, 16))
    logits = model(x)
    assert logits.shape == (2, 16, 1024) and logits.abs().max() <= 5.0
    y = x.clone()
    y[:, 9:] = torch.randint(0, 1024, (2, 7))
    assert torch.allclose(model(y)[:, :9], logits[:, :9], atol=1e-5)
    assert not torch.allclose(model(y)[:, 9:], logits[:, 9:])


def test_common_flags_are_pinned():
    """The shared knobs every variant inherits: changing this set is a deliberate, visible decision."""
    assert [f.name for f in dataclasses.fields(GPTConfig)] == [
        "vocab_size", "num_layers", "model_dim", "num_heads", "num_kv_heads", "mlp_mult", "rope_base",
        "logit_softcap", "qk_gain_init", "tied_embed_init_std", "matrix_lr", "scalar_lr", "tied_embed_lr",
        "muon_momentum", "muon_momentum_warmup_start", "muon_momentum_warmup_steps", "muon_backend_steps",
        "beta1", "beta2", "adam_eps", "grad_clip_norm", "warmdown_steps", "mlp_activation", "norm",
        "residual_scale", "qk_norm", "position", "rope_fraction", "cope_positions", "muon_weight_decay",
        "adam_weight_decay", "min_lr", "late_qat", "export", "export_calibration_batches", "eval", "eval_stride",
        "ttt_chunk_tokens", "ttt_epochs", "ttt_lr", "ttt_momentum"]
    for f in dataclasses.fields(GPTConfig):
        assert f.metadata.get("help"), f"{f.name} has no help text"


def test_flags_become_typed_config_values_in_layer_order():
    variant, _ = get_variant("baseline")
    flags = parse_config_flags(GPTConfig, ["--model-dim", "64", "--matrix-lr=0.02", "--num-heads", "4"])
    config = variant.resolve(None, {"model_dim": 128, "num_layers": 3}, flags)
    assert (config.model_dim, config.num_layers, config.matrix_lr, config.num_heads) == (64, 3, 0.02, 4)
    with pytest.raises(UserError, match="expects a finite number"):
        parse_config_flags(GPTConfig, ["--matrix-lr", "fast"])
    with pytest.raises(UserError, match="needs a value"):
        parse_config_flags(GPTConfig, ["--num-layers"])


def test_no_config_field_shadows_a_command_line_option():
    """`--seed` is the training seed everywhere: a variant field of the same name would be set by `show` and
    silently ignored by `run`, so registration refuses it, and the reserved names cover every option."""
    import argparse

    from harness.cli import build_parser
    from harness.registry import RESERVED_FIELD_NAMES, known_variant_names, register

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    options = {a.dest for name in ("run", "show", "sweep", "tune") for a in commands[name]._actions}
    assert options - {"help"} <= RESERVED_FIELD_NAMES
    for name in known_variant_names():
        fields = {f.name for f in dataclasses.fields(get_variant(name)[0].config_cls)}
        assert not fields & RESERVED_FIELD_NAMES, name

    @dataclasses.dataclass(frozen=True)
    class Clashing(GPTConfig):
        seed: int = 3

    with pytest.raises(UserError, match="config field 'seed' has the name of a command-line option"):
        register("clashing", config=Clashing, build=GPT)


def test_a_generator_seed_is_a_parameter_and_the_training_seed_is_not():
    from conftest import harness_main

    shown = [json.loads(harness_main("show", "nca", "--json", "--seed", str(s), "--num-layers", "1",
                                     "--model-dim", "32", "--num-heads", "2", "--num-kv-heads", "1").stdout)
             for s in (1, 2)]
    assert shown[0]["config"] == shown[1]["config"] and shown[0]["config"]["generator_seed"] == 1234
    own = json.loads(harness_main("show", "nca", "--json", "--generator-seed", "5", "--num-layers", "1",
                                  "--model-dim", "32", "--num-heads", "2", "--num-kv-heads", "1").stdout)
    assert own["config"]["generator_seed"] == 5
