"""The recurrent families compute what their papers define: the feedback transformer against a position-by-position
computation from its definition, and adaptive computation time (harness/recurrence.py) over looped blocks."""

import conformance as cf
import torch

from harness.conformance import randomize
from harness.model import GPT, apply_rotary, rms_norm
from harness.recurrence import ACT


def feedback_by_definition(model, ids: torch.Tensor, chunk_len: int) -> torch.Tensor:
    """Feedback-transformer logits one position and one layer at a time, with an explicit softmax: at layer l,
    position t attends to the memory m_τ = Σ_j softmax(w)_j·x_τ^j of every τ before its chunk's start and to the
    layer-l inputs of its chunk's positions up to t (chunks of one: the paper's recurrence)."""
    x0 = model.embed(ids)
    bsz, seq_len, _ = x0.shape
    weights = torch.softmax(model.memory_logits, dim=0)
    n_enc = len(model.blocks) // 2
    inputs = [[] for _ in model.blocks]  # per layer: the normed attention input of every position so far
    memory, finals = [], []
    for t in range(seq_len):
        start = t - t % chunk_len
        x, skips, states = x0[:, t], [], [x0[:, t]]
        for i, block in enumerate(model.blocks):
            if i >= n_enc and skips:
                x = x + model.skip_weights[i - n_enc] * skips.pop()
            attn = block.attn
            x = block.resid_mix[0] * x + block.resid_mix[1] * x0[:, t]
            inputs[i].append(rms_norm(x))
            source = torch.stack([rms_norm(m) for m in memory[:start]] + inputs[i][start:t + 1], dim=1)
            heads, kv_heads, dim = attn.num_heads, attn.num_kv_heads, attn.head_dim
            cos, sin = (r[0, 0] for r in attn.rotary(seq_len, x.device, x.dtype))
            q = apply_rotary(rms_norm(attn.c_q(inputs[i][t]).view(bsz, heads, dim)), cos[t], sin[t])
            q = q * attn.q_gain[:, None]
            k = apply_rotary(rms_norm(attn.c_k(source).view(bsz, t + 1, kv_heads, dim)), cos[:t + 1, None],
                             sin[:t + 1, None]).repeat_interleave(heads // kv_heads, dim=2)
            v = attn.c_v(source).view(bsz, t + 1, kv_heads, dim).repeat_interleave(heads // kv_heads, dim=2)
            p = torch.softmax(torch.einsum("bhd,bshd->bhs", q, k) / dim ** 0.5, dim=-1)
            x = x + block.attn_scale * attn.proj(torch.einsum("bhs,bshd->bhd", p, v).reshape(bsz, -1))
            x = x + block.mlp_scale * block.mlp(rms_norm(x))
            if i < n_enc:
                skips.append(x)
            states.append(x)
        memory.append(sum(w * s for w, s in zip(weights, states)))
        finals.append(x)
    return model.logits(torch.stack(finals, dim=1))


def random_feedback(preset=None, **changes):
    variant, config = cf.tiny("feedback", preset, num_layers=3, **changes)  # 3 layers: a U-Net skip is used
    model = cf.build(variant, config)
    randomize(model, seed=1)
    return model.eval(), config


def test_one_position_chunks_are_the_papers_recurrence():
    model, config = random_feedback("exact")  # chunk_len 1
    x = cf.random_tokens(config, batch=2, seq_len=20)
    with torch.no_grad():
        assert torch.allclose(model(x), feedback_by_definition(model, x, 1), atol=1e-4, rtol=1e-4)


def test_chunked_feedback_reads_the_memory_of_earlier_chunks_only():
    model, config = random_feedback(chunk_len=8)
    x = cf.random_tokens(config, batch=2, seq_len=20)  # chunks 0..7, 8..15 and a short last one
    with torch.no_grad():
        assert torch.allclose(model(x), feedback_by_definition(model, x, 8), atol=1e-4, rtol=1e-4)


def test_feedback_with_one_chunk_is_the_baseline():
    model, config = random_feedback()
    baseline = GPT(config)
    baseline.load_state_dict({k: v for k, v in model.state_dict().items() if k != "memory_logits"})
    x = cf.random_tokens(config, batch=2, seq_len=config.chunk_len)
    with torch.no_grad():
        assert torch.equal(model(x), baseline.eval()(x))


def test_act_output_weights_sum_to_one_and_steps_are_counted():
    h, steps = torch.ones(3, 17, 4), 5
    act = ACT(h, steps, 0.01)
    g = torch.Generator().manual_seed(0)
    for n in range(steps):
        act.update(act.keep(h, h), torch.rand(3, 17, generator=g), n)
    assert torch.allclose(act.out, h)
    assert not act.running.any() and ((act.steps >= 1) & (act.steps <= steps)).all()
    assert ((act.remainder > 0) & (act.remainder <= 1)).all()


def test_a_token_that_halts_after_the_first_loop_is_scored_on_that_loop():
    variant, config = cf.tiny("looped", "k2x6_act")
    model = cf.build(variant, config)
    randomize(model, seed=2)
    with torch.no_grad():
        model.halting.bias.fill_(30.0)  # p ≈ 1: every token halts at its first loop
    _, one_loop = cf.tiny("looped", None, unique_layers=2, loops=1)
    reference = cf.build(variant, one_loop)
    state = {k: v[:1] if k in ("loop_emb.weight", "inject.weight") else v for k, v in model.state_dict().items()}
    reference.load_state_dict({k: v for k, v in state.items() if not k.startswith("halting.")})
    x = cf.random_tokens(config)
    model.eval()
    assert torch.equal(cf.logits_of(model, x), cf.logits_of(reference.eval(), x))
    assert model.metrics() == {"mean_loops_per_token": 1.0, "skippable_loop_fraction": 1 - 1 / 6}
