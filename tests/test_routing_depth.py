"""The routing families' own properties: mod's causal selection passes the causality check and its non-causal
study mode fails it, its attention sees only selected keys, its router loss steers the processed fraction to
the capacity; moh weights exactly its shared heads and each token's top-k routed heads."""

import conformance as cf
import torch

from harness.conformance import causality, randomize
from harness.model import CausalSelfAttention


def live_mod(**changes):
    """A tiny mod with every parameter random (zero-initialised projections would hide what routing does)."""
    variant, config = cf.tiny("mod", **changes)
    model = cf.build(variant, config)
    randomize(model)
    return model, config


def test_topk_over_the_sequence_is_caught_by_the_causality_check():
    model, config = live_mod(selection="topk_sequence")
    assert cf.causality_problems(model, config)


def test_threshold_selection_is_causal_in_training_and_evaluation():
    model, config = live_mod()
    assert cf.causality_problems(model, config) == []
    assert causality(model, config.vocab_size, cf.CAUSAL_SEQ_LEN, "train") == []


def test_routed_attention_sees_only_earlier_selected_tokens():
    model, config = live_mod()
    attn = model.routed[0].attn
    x = torch.randn(2, 48, config.model_dim, generator=torch.Generator().manual_seed(0))
    keep = torch.rand(2, 48, generator=torch.Generator().manual_seed(1)) < 0.4
    with torch.no_grad():
        # All selected: the baseline's attention, so the mask dimension and the padding change nothing else.
        everyone = torch.ones_like(keep)
        assert torch.allclose(attn(x, everyone), CausalSelfAttention.forward(attn, x), atol=1e-5)
        # Skipped tokens are not keys: changing them leaves every selected token's output as it was.
        changed = torch.where(keep[..., None], x, torch.randn_like(x))
        assert torch.allclose(attn(x, keep)[keep], attn(changed, keep)[keep], atol=1e-5)
        assert not torch.allclose(attn(x, everyone)[keep], attn(changed, everyone)[keep], atol=1e-5)


def test_router_loss_brings_the_processed_fraction_to_the_capacity():
    variant, config = cf.tiny("mod", capacity=0.125, router_loss_weight=1.0)
    model = cf.build(variant, config)
    with torch.no_grad():
        for block in model.routed:
            block.router_bias.zero_()  # start far from the capacity: about half the tokens selected
    probe = cf.random_tokens(config, batch=8, seq_len=64, seed=99)

    def processed() -> float:
        model.eval()
        cf.logits_of(model, probe)
        model.train()
        return model.metrics()["processed_fraction_routed"]

    before = processed()
    tokens = [cf.random_tokens(config, batch=8, seq_len=65, seed=s) for s in range(20)]
    cf.train(model, config, [(t[:, :-1], t[:, 1:]) for t in tokens])
    after = processed()
    assert before > 0.3 and abs(after - 0.125) < 0.07, (before, after)


def test_moh_weights_shared_heads_and_each_tokens_top_k_routed_heads():
    variant, config = cf.tiny("moh", num_heads=8)  # 2 shared + top-4 of 6 routed, as at full size
    model = cf.build(variant, config)
    randomize(model)
    attn = model.blocks[0].attn
    x = torch.randn(2, 16, config.model_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        gates, chosen, _ = attn.gates(x)
    assert (gates[..., :2] > 0).all() and ((gates[..., 2:] > 0).sum(-1) == 4).all()
    assert torch.equal(gates[..., 2:] > 0, chosen > 0)
    model.eval()
    cf.logits_of(model, cf.random_tokens(config))
    metrics = model.metrics()
    assert metrics["mean_active_heads_per_token"] == 6 and metrics["sparse_skippable_head_fraction"] == 0.25
    loads = [v for k, v in metrics.items() if k.startswith("head_load_l0_")]
    assert len(loads) == 6 and abs(sum(loads) - 4) < 1e-9
