"""The shortening pieces hourglass and token_pooling share (harness/shortening.py): fixed groups never let a token
read a later token, dynamic segments are pooled and handed back as the paper's bookkeeping says."""

import conformance as cf
import pytest
import torch

from harness.model import CastedLinear
from harness.registry import get_variant
from harness.shortening import (
    ShortenedConfig,
    expand_segments,
    hourglass_shorten,
    pool_groups,
    pool_segments,
    segment_index,
    upsample_groups,
)


def marks(seq_len: int) -> torch.Tensor:
    """(1, T, T): position t carries the t-th unit vector, so an output's coordinates say which tokens reach it."""
    return torch.eye(seq_len)[None]


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("seq_len", [8, 11, 13])
def test_hourglass_shift_pool_upsample_never_lets_a_token_see_a_later_one(k, seq_len):
    out = upsample_groups(hourglass_shorten(marks(seq_len), k), k, seq_len)[0]
    assert out.shape == (seq_len, seq_len)
    for t in range(seq_len):
        seen = out[t].nonzero().flatten().tolist()
        assert max(seen) <= t, f"token {t} receives tokens {seen}"
        assert k * (t // k) in seen  # the newest token its group may hold: nothing causal is thrown away


def test_the_mark_check_catches_pooling_without_the_shift():
    out = upsample_groups(pool_groups(marks(8), 2), 2, 8)[0]
    assert out[0, 1] > 0  # token 0 would read token 1


@pytest.mark.parametrize("k", [2, 4])
def test_linear_pooling_and_upsampling_stay_causal(k):
    torch.manual_seed(0)
    dim, seq_len = 6, 13
    pool, up = CastedLinear(k * dim, dim), CastedLinear(dim, k * dim)
    x = torch.randn(2, seq_len, dim, requires_grad=True)
    out = upsample_groups(hourglass_shorten(x, k, pool), k, seq_len, up)
    for t in range(seq_len - 1):
        (grad,) = torch.autograd.grad(out[:, t].sum(), x, retain_graph=True)
        assert grad[:, t + 1:].abs().max() == 0, f"token {t} depends on later tokens"


# Segments end at 1, 4, 5 and 7; tokens 8 and 9 are an unfinished fifth segment.
BOUNDARIES = torch.tensor([[0, 1, 0, 0, 1, 1, 0, 1, 0, 0]], dtype=torch.float32)


def test_token_pooling_bookkeeping_on_a_hand_made_boundary_pattern():
    assert segment_index(BOUNDARIES)[0].tolist() == [0, 0, 1, 1, 1, 2, 3, 3, 4, 4]
    pooled = pool_segments(marks(10), BOUNDARIES, capacity=10)[0]
    expected = torch.zeros(10, 10)
    for slot, tokens in enumerate([[0, 1], [2, 3, 4], [5], [6, 7], [8, 9]]):
        expected[slot, tokens] = 1 / len(tokens)
    assert torch.allclose(pooled, expected)
    # The middle layers see [null, segment 0, …]: token t reads the slot of the last segment ended at or before t.
    short = torch.arange(11.0)[None, :, None]
    assert expand_segments(short, BOUNDARIES)[0, :, 0].tolist() == [0, 1, 1, 1, 2, 3, 3, 4, 4, 4]


def test_segments_past_the_buffer_are_left_out_and_tokens_read_the_last_finished_one():
    pooled = pool_segments(marks(10), BOUNDARIES, capacity=2)[0]
    assert torch.allclose(pooled[0, :2], torch.full((2,), 1 / 2))
    assert torch.allclose(pooled[1, 2:5], torch.full((3,), 1 / 3))
    assert pooled[:, 5:].abs().max() == 0
    short = torch.arange(3.0)[None, :, None]  # null, segment 0, segment 1 (which ended at token 4)
    assert expand_segments(short, BOUNDARIES)[0, :, 0].tolist() == [0, 1, 1, 1, 2, 2, 2, 2, 2, 2]


def test_straight_through_boundaries_pool_the_same_and_pass_gradient():
    soft = torch.full_like(BOUNDARIES, 0.3, requires_grad=True)
    straight_through = BOUNDARIES + soft - soft.detach()
    h = torch.randn(1, 10, 4)
    pooled = pool_segments(h, straight_through, capacity=10)
    assert torch.equal(pooled, pool_segments(h, BOUNDARIES, capacity=10))
    (pooled * torch.randn_like(pooled)).sum().backward()
    assert soft.grad.abs().sum() > 0


@pytest.mark.parametrize("num_layers,outer_layers,outer", [(9, -1, 2), (2, -1, 0), (1, -1, 0), (3, -1, 1),
                                                           (9, 4, 4), (2, 2, 0), (9, 0, 0)])
def test_outer_layers_derive_from_depth_and_always_leave_a_shortened_layer(num_layers, outer_layers, outer):
    assert ShortenedConfig(num_layers=num_layers, outer_layers=outer_layers).outer() == outer


def test_token_pooling_reports_its_shortening_and_overflow():
    variant, config = cf.tiny("token_pooling", "rate4")
    model = cf.build(variant, config)
    with torch.no_grad():  # every token ends a segment: no shortening, half the tokens past a T/2 buffer
        model.boundary_weight.zero_()
        model.boundary_bias.fill_(1.0)
    model.eval()
    model(cf.random_tokens(config, seq_len=64))
    metrics = model.metrics()
    assert metrics["mean_shortening_factor"] == 1.0 and metrics["overflow_token_fraction"] == 0.5
    assert metrics["middle_slots_filled"] == 1.0
    model.train()
    _, extra = model(cf.random_tokens(config, seq_len=64))
    assert extra["boundary_prior"] > 0
    model.eval()
    assert model.metrics() == {}


def test_the_boundary_prior_is_least_at_the_target_rate():
    get_variant("token_pooling")
    from variants.token_pooling import binomial_prior_loss

    losses = {k: binomial_prior_loss(torch.tensor([[1.0] * k + [0.0] * (64 - k)]), 0.25).item() for k in range(65)}
    assert min(losses, key=losses.get) == 16
