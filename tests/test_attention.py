"""Which attention kernel a run may use: flash is pinned on CUDA as in the challenge, and a family whose shapes
flash cannot take is found from one watched forward (on a CPU by PyTorch's own rules for flash), recorded,
and given the fallback kernels instead of failing or hiding it."""

import conformance as cf
import torch

from harness.attention import flash_blockers, pin, probe


def qkv(q_dim=32, v_dim=32, heads=2, kv_heads=2, seq=16):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(2, heads, seq, q_dim, generator=g), torch.randn(2, kv_heads, seq, q_dim, generator=g),
            torch.randn(2, kv_heads, seq, v_dim, generator=g))


def test_flash_rules_on_shapes():
    assert flash_blockers(*qkv(), is_causal=True) == []
    assert flash_blockers(*qkv(kv_heads=1), is_causal=True, enable_gqa=True) == []
    assert "head dims q 40, k 40, v 32" in flash_blockers(*qkv(q_dim=40), is_causal=True)[0]
    assert "head dims q 512" in flash_blockers(*qkv(q_dim=512, v_dim=512))[0]
    q, k, v = qkv()
    assert "attn_mask" in flash_blockers(q, k, v, attn_mask=torch.ones(16, 16, dtype=torch.bool))[0]
    assert "causal with 8 queries and 16 keys" in flash_blockers(q[:, :, :8], k, v, is_causal=True)[0]


def test_the_probe_counts_every_attention_call_of_a_family():
    variant, config = cf.tiny("baseline")
    found = probe(cf.build(variant, config), config.vocab_size, 64, torch.device("cpu"), None)
    assert found == {"calls": config.num_layers, "flash_calls": config.num_layers, "fallback_reasons": [],
                     "checked_by": "shape rules"}
    assert pin(torch.device("cpu"), found) == "cpu (PyTorch's choice)"


def test_a_decoupled_rope_key_is_recorded_as_falling_back_from_flash():
    variant, config = cf.tiny("mla", rope_dim=8)
    found = probe(cf.build(variant, config), config.vocab_size, 64, torch.device("cpu"), None)
    assert found["calls"] == config.num_layers and found["flash_calls"] == 0
    assert "flash needs them equal" in found["fallback_reasons"][0]
