"""The shared model options: what each one changes, what it keeps equal, and that a family which does not run
the shared piece an option lives in refuses it instead of training without it."""

import dataclasses
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from harness.config import as_dict
from harness.errors import UserError
from harness.model import (
    GPT,
    LATER_FIELDS,
    MLP,
    CausalSelfAttention,
    GPTConfig,
    Rotary,
    apply_rotary,
    cope_attention,
    mlp_hidden,
)
from harness.registry import get_variant
from harness.runspec import hashed_config

TINY = GPTConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1)


def numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("activation", ["swiglu", "geglu"])
def test_gated_mlps_keep_the_numbers_and_flops_of_the_relu2_mlp(activation):
    c = GPTConfig()
    gated = dataclasses.replace(c, mlp_activation=activation)
    assert mlp_hidden(gated) == 683  # 2/3 of 1024: three matrices of 683 hold what two of 1024 do
    plain, glu = numel(MLP(c)), numel(MLP(gated))
    assert plain == 1_048_576 and glu == 1_049_088 and abs(glu / plain - 1) < 1e-3  # FLOPs scale the same


def test_each_activation_is_the_function_it_names():
    x = torch.randn(3, 32)
    for activation, expected in [("relu2", lambda h, g: F.relu(h) ** 2),
                                 ("leaky_relu2", lambda h, g: F.leaky_relu(h, 0.5) ** 2),
                                 ("gelu", lambda h, g: F.gelu(h, approximate="tanh")),
                                 ("swiglu", lambda h, g: F.silu(g) * h),
                                 ("geglu", lambda h, g: F.gelu(g, approximate="tanh") * h)]:
        mlp = MLP(dataclasses.replace(TINY, mlp_activation=activation))
        torch.nn.init.normal_(mlp.proj.weight)
        gate = mlp.gate(x) if hasattr(mlp, "gate") else None
        assert torch.allclose(mlp(x), mlp.proj(expected(mlp.fc(x), gate)), atol=1e-6), activation


def test_partial_rope_rotates_the_leading_dimensions_only():
    x = torch.randn(1, 2, 5, 16)
    cos, sin = Rotary(8, 10000.0)(5, x.device, x.dtype)
    out = apply_rotary(x, cos, sin)
    assert torch.equal(out[..., 8:], x[..., 8:]) and not torch.allclose(out[..., :8], x[..., :8])
    assert torch.equal(out[..., :8], apply_rotary(x[..., :8].contiguous(), cos, sin))
    attn = CausalSelfAttention(dataclasses.replace(TINY, rope_fraction=0.5))
    assert attn.rotary.inv_freq.numel() == 4
    assert CausalSelfAttention(dataclasses.replace(TINY, rope_fraction=0.0)).rotary is None


def test_cope_counts_gated_keys_and_with_zero_embeddings_is_plain_causal_attention():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8) for _ in range(3))
    plain = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(cope_attention(q, k, v, torch.zeros(4, 8)), plain, atol=1e-5)
    # With one embedding per integer position, query i's logit for key j gains q_i·e(p_ij), where p_ij sums the
    # gates sigmoid(q_i·k_m/√d) over m = j..i and interpolates between the nearest integers: checked by hand.
    emb = torch.randn(8, 8)
    out = cope_attention(q, k, v, emb)
    i = 5
    s = (q[0, 1, i] @ k[0, 1, : i + 1].T) / 8 ** 0.5
    p = torch.sigmoid(s).flip(0).cumsum(0).flip(0).clamp(max=7)
    lo = p.floor().long()
    e = emb[lo] * (1 - (p - lo))[:, None] + emb[(lo + 1).clamp(max=7)] * (p - lo)[:, None]
    expected = torch.softmax(s + e @ q[0, 1, i], 0) @ v[0, 1, : i + 1]
    assert torch.allclose(out[0, 1, i], expected, atol=1e-5)


def test_cope_positions_are_trained_and_the_model_stays_causal():
    c = dataclasses.replace(TINY, position="cope", cope_positions=4)
    model = GPT(c)
    x = torch.randint(0, 64, (2, 24))
    model(x).logsumexp(-1).mean().backward()
    assert all(block.attn.cope_pos.grad is not None for block in model.blocks)
    y = x.clone()
    y[:, 12:] = (y[:, 12:] + 1) % 64
    assert torch.allclose(model(x)[:, :12], model(y)[:, :12], atol=1e-6)


def test_residual_scales_and_norms():
    assert GPT(dataclasses.replace(TINY, residual_scale="scalar")).blocks[0].attn_scale.shape == (1,)
    assert GPT(dataclasses.replace(TINY, residual_scale="none")).blocks[0].attn_scale is None
    layer = GPT(dataclasses.replace(TINY, norm="layer"))
    h = layer.embed(torch.randint(0, 64, (1, 5)))
    assert torch.allclose(h.mean(-1), torch.zeros(1, 5), atol=1e-5)


def test_default_options_leave_the_run_id_as_it_was():
    """Runs made before the options existed keep their ids and leaderboard rows: options at their defaults are
    not hashed."""
    assert set(hashed_config(as_dict(GPTConfig()))) == set(as_dict(GPTConfig())) - set(LATER_FIELDS)
    assert hashed_config(as_dict(dataclasses.replace(GPTConfig(), norm="layer")))["norm"] == "layer"


def test_a_family_that_replaces_the_piece_refuses_the_option():
    variant, _ = get_variant("mps")
    config = variant.resolve(None, None, {"vocab_size": 64, "model_dim": 32, "num_heads": 2, "num_kv_heads": 1,
                                          "num_layers": 2, "norm": "layer"})
    with pytest.raises(UserError, match="--norm layer does not apply to variant 'mps'"):
        variant.construct(config)
    with pytest.raises(UserError, match="--rope-fraction 0.5 applies to --position rope only"):
        get_variant("baseline")[0].resolve(None, None, {"position": "cope", "rope_fraction": 0.5})
    done = subprocess.run([sys.executable, "-m", "harness", "show", "hypernetwork", "--mlp-activation", "swiglu"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "gate matrix" in done.stderr


def test_the_mha_preset_is_one_kv_head_per_query_head_at_any_size():
    from harness.budget import load_budget

    variant, _ = get_variant("baseline")
    full = variant.resolve("mha", None, {})
    smoke = variant.resolve("mha", load_budget("smoke").model, {})
    assert (full.num_heads, full.num_kv_heads, full.model_dim) == (8, 8, 480)
    assert smoke.num_kv_heads == smoke.num_heads == 4
    assert GPTConfig(num_heads=2, num_kv_heads=0).num_kv_heads == 2
