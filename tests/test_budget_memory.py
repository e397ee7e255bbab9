"""Causal pooling (harness/causal_pool.py) and the families built on it or beside it — attention_budget,
memory_slots, resonance: the pooled quantity at t uses only tokens ≤ t (or only earlier chunks), checked by
hand; the factored resonance read against the buffers it stands for; the budget's gates, the adaptive span's
mask and the window's band. Tiny sizes, CPU."""

import math

import conformance as cf
import pytest
import torch

from harness import causal_pool


def test_running_mean_at_t_is_the_mean_of_tokens_up_to_t():
    x = torch.randn(2, 13, 3)
    out = causal_pool.running_mean(x)
    for t in range(13):
        assert torch.allclose(out[:, t], x[:, :t + 1].mean(dim=1), atol=1e-6)


@pytest.mark.parametrize("seq_len", [16, 19])  # whole chunks, and a partial last chunk
def test_previous_chunks_mean_uses_only_earlier_chunks_exactly(seq_len):
    chunk = 4
    x = torch.randn(2, seq_len, 3)
    means = causal_pool.previous_chunks_mean(x, chunk)
    assert means.shape == (2, causal_pool.num_chunks(seq_len, chunk), 3)
    assert torch.equal(means[:, 0], torch.zeros(2, 3))
    for c in range(1, means.size(1)):
        assert torch.allclose(means[:, c], x[:, :c * chunk].mean(dim=1), atol=1e-6)
        y = x.clone()
        y[:, c * chunk:] = torch.randn_like(y[:, c * chunk:])  # the chunk itself and everything after it
        assert torch.equal(causal_pool.previous_chunks_mean(y, chunk)[:, :c + 1], means[:, :c + 1])


def test_the_last_chunk_stays_in_the_autograd_graph_with_a_zero_gradient():
    x = torch.randn(1, 6, 2, requires_grad=True)
    causal_pool.previous_chunks(causal_pool.to_chunks(x, 8).sum(dim=2)).sum().backward()
    assert x.grad is not None and torch.equal(x.grad, torch.zeros_like(x))


def test_to_positions_gives_each_position_its_chunk():
    per_chunk = torch.arange(3.0).view(1, 3, 1)
    assert causal_pool.to_positions(per_chunk, 4, 10).flatten().tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]


# memory_slots -------------------------------------------------------------------------------------------------

def test_a_chunked_memory_read_sees_earlier_chunks_and_nothing_of_its_own():
    """Output at t depends on x_t (its query) and on the chunks before t's; not on other tokens of its chunk."""
    variant, config = cf.tiny("memory_slots", chunk_len=8)
    memory = cf.build(variant, config).memories["1"]
    torch.nn.init.normal_(memory.out.weight)  # zero-initialised: make the read visible
    x = torch.randn(1, 24, config.model_dim)
    base = memory(x)
    y = x.clone()
    y[:, 9] += 1.0  # chunk 1
    changed = memory(y)
    assert torch.equal(changed[:, :9], base[:, :9]) and torch.equal(changed[:, 10:16], base[:, 10:16])
    assert not torch.allclose(changed[:, 16:], base[:, 16:])


def test_running_memory_slots_are_the_gated_average_of_the_writes_so_far():
    variant, config = cf.tiny("memory_slots", mode="running")
    memory = cf.build(variant, config).memories["1"]
    xn = torch.nn.functional.rms_norm(torch.randn(1, 5, config.model_dim), (config.model_dim,))
    gate, value = torch.sigmoid(memory.write_gate(xn)), memory.write_value(xn)
    t = 3
    expected = (memory.slots + (gate[0, :t + 1, :, None] * value[0, :t + 1, None, :]).sum(0)) \
        / (1 + gate[0, :t + 1].sum(0))[:, None]
    written = causal_pool.running_sum(gate.unsqueeze(-1) * value.unsqueeze(2))
    assert torch.allclose(memory.slots_after(written, causal_pool.running_sum(gate))[0, t], expected, atol=1e-5)


# resonance ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pool", ["running", "chunked"])
def test_the_factored_resonance_read_equals_reading_the_explicit_buffers(pool):
    """R_m ← decay·R_m + (1 − decay)·g_m·p after each layer, per position; then w = softmax(q·R/√d), read w·R."""
    variant, config = cf.tiny("resonance", pool=pool, chunk_len=4, num_buffers=3)
    model = cf.build(variant, config)
    torch.nn.init.normal_(model.resonance)
    d, decay = config.model_dim, config.decay
    x = torch.randn(2, 10, d)
    pooled = [model.pool(torch.randn(2, 10, d)) for _ in range(3)]
    gates = [torch.sigmoid(model.diffuse(p)) for p in pooled]
    buffers = model.resonance.expand(2, 10, -1, -1)
    for p, g in zip(pooled, gates):
        buffers = decay * buffers + (1 - decay) * g.unsqueeze(-1) * p.unsqueeze(2)
    q = torch.nn.functional.rms_norm(x, (d,))
    w = torch.softmax(torch.einsum("btd,btmd->btm", q, buffers) / math.sqrt(d), dim=-1)
    expected = torch.einsum("btm,btmd->btd", w, buffers)
    assert torch.allclose(model.read(x, pooled, gates), expected, atol=1e-5)


def test_resonance_pooling_at_t_sees_only_tokens_up_to_t():
    variant, config = cf.tiny("resonance")
    model = cf.build(variant, config)
    x = torch.randn(1, 12, config.model_dim)
    y = x.clone()
    y[:, 7:] = torch.randn_like(y[:, 7:])
    assert torch.equal(model.pool(x)[:, :7], model.pool(y)[:, :7])


# attention_budget ---------------------------------------------------------------------------------------------

def test_a_spent_budget_skips_every_layer_and_a_large_one_computes_every_layer():
    variant, config = cf.tiny("attention_budget")
    model = cf.build(variant, config)
    x = cf.random_tokens(config)
    model.eval()
    assert model.config.num_layers / 2 + 0.5 == model.budget.item()
    cf.logits_of(model, x)
    assert model.metrics()["computed_fraction"] == 1.0
    with torch.no_grad():
        model.budget.fill_(0.0)  # below every cost sigmoid(·) > 0
    model.train()
    model.eval()  # a new evaluation: the counts start afresh
    cf.logits_of(model, x)
    metrics = model.metrics()
    assert metrics["computed_fraction"] == 0.0 and metrics["computed_fraction_layer1"] == 0.0


def test_training_returns_the_compute_and_span_penalties():
    variant, config = cf.tiny("attention_budget", "span")
    model = cf.build(variant, config)
    _, extra = model(cf.random_tokens(config))
    assert set(extra) == {"compute", "span"}
    assert extra["compute"].item() > 0 and math.isclose(extra["span"].item(), config.span_weight, rel_tol=1e-6)


def test_adaptive_span_is_the_papers_renormalised_soft_mask():
    """Weights m(d)·exp(s) / Σ m(d)·exp(s), m(d) = clamp((R + z − d)/R, 0, 1): SDPA with the bias log m."""
    from variants.attention_budget import BudgetAttention

    _, config = cf.tiny("attention_budget", "span", max_span=8, span_ramp=4)
    attn = BudgetAttention(config, 0)
    with torch.no_grad():
        attn.span.copy_(torch.tensor([0.25, 0.75]))  # z = 2 and 6
    h, hd, t = config.num_heads, config.model_dim // config.num_heads, 20
    q, k, v = torch.randn(1, t, h, hd), torch.randn(1, t, 1, hd), torch.randn(1, t, 1, hd)
    out = attn.attend(q, k, v).view(1, t, h, hd)
    qn, kn = torch.nn.functional.rms_norm(q, (hd,)), torch.nn.functional.rms_norm(k, (hd,))
    cos, sin = attn.rotary(t, q.device, q.dtype)
    from harness.model import apply_rotary

    qn = apply_rotary(qn.transpose(1, 2), cos, sin) * attn.q_gain[None, :, None, None]
    kn = apply_rotary(kn.transpose(1, 2), cos, sin)
    scores = (qn @ kn.transpose(-1, -2)) / math.sqrt(hd)  # (1, H, T, T)
    distance = torch.arange(t)[:, None] - torch.arange(t)[None, :]
    m = ((4 + attn.spans()[:, None, None] - distance) / 4).clamp(0, 1) * (distance >= 0)
    weights = m * scores.exp()
    weights = weights / weights.sum(-1, keepdim=True)
    expected = (weights @ v.transpose(1, 2)).transpose(1, 2)
    assert torch.allclose(out, expected, atol=1e-5)
    assert (weights[0, 0][distance > 2 + 4] == 0).all()  # head 0 sees no further than z + R


def test_a_windowed_layer_sees_only_the_last_window_positions_and_a_global_layer_sees_all():
    from variants.attention_budget import BudgetAttention

    _, config = cf.tiny("attention_budget", "swa", window=4, global_every=2)
    local, global_ = BudgetAttention(config, 0), BudgetAttention(config, 1)
    assert (local.window, global_.window) == (4, 0)
    h, hd, t = config.num_heads, config.model_dim // config.num_heads, 12
    q, k, v = torch.randn(1, t, h, hd), torch.randn(1, t, 1, hd), torch.randn(1, t, 1, hd)
    k2, v2 = k.clone(), v.clone()
    k2[:, :7], v2[:, :7] = torch.randn(1, 7, 1, hd), torch.randn(1, 7, 1, hd)  # older than 11 − 4 + 1 = 8
    assert torch.equal(local.attend(q, k, v)[:, 10:], local.attend(q, k2, v2)[:, 10:])
    assert not torch.allclose(global_.attend(q, k, v)[:, 10:], global_.attend(q, k2, v2)[:, 10:])
