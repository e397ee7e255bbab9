"""The state-space mixer (harness/ssm.py) computes its recurrence: the chunked matmul scan against a loop over
positions, at lengths that are not multiples of the chunk; and the hybrid family puts attention where it says."""

import conformance as cf
import pytest
import torch

from harness.conformance import randomize
from harness.ssm import SSMMixer, chunked_scan, sequential_scan


def scan_inputs(seq_len: int, seed: int = 0, bsz: int = 2, heads: int = 3, width: int = 4, state: int = 5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(bsz, seq_len, heads, width, generator=g)
    b, c = (torch.randn(bsz, seq_len, state, generator=g) / state ** 0.5 for _ in range(2))
    dt = torch.nn.functional.softplus(torch.randn(bsz, seq_len, heads, generator=g) - 1)
    log_a = -torch.linspace(0.5, 8.0, heads)
    return x, dt, log_a, b, c


@pytest.mark.parametrize("seq_len,chunk_len", [(37, 8), (64, 16), (100, 64), (5, 64), (1, 4)])
def test_chunked_scan_equals_the_sequential_recurrence(seq_len, chunk_len):
    inputs = scan_inputs(seq_len)
    torch.testing.assert_close(chunked_scan(*inputs, chunk_len), sequential_scan(*inputs), atol=1e-5, rtol=1e-5)


def test_chunk_length_changes_cost_not_outputs_or_gradients():
    variant, config = cf.tiny("ssm", ssm_head_dim=16)  # four heads
    mixer = SSMMixer(config)
    randomize(mixer)
    u = torch.randn(2, 45, config.model_dim, generator=torch.Generator().manual_seed(0), requires_grad=True)
    outs = []
    for chunk_len in (7, 64):
        mixer.chunk_len = chunk_len
        y = mixer(u)
        outs.append((y, *torch.autograd.grad(y.square().sum(), (u, mixer.A_log, mixer.dt_bias))))
    # Against the largest value: fp32 sums of terms of both signs, and the decays are differences of cumulative
    # sums (as Mamba-2's kernel takes them), which the gradient of A feels most.
    for a, b, tolerance in zip(*outs, (1e-5, 1e-5, 1e-3, 1e-3)):
        assert (a - b).abs().max() <= tolerance * b.abs().max()


def test_strong_decays_stay_finite_in_bf16():
    """Δ·A summed over a chunk reaches −10⁴ here: the decays are exponentiated in fp32 and underflow to 0."""
    x, dt, log_a, b, c = scan_inputs(130)
    x = x.bfloat16().requires_grad_()
    y = chunked_scan(x, dt * 100, log_a, b.bfloat16(), c.bfloat16(), 64)
    y.float().square().sum().backward()
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all() and torch.isfinite(x.grad.float()).all()


def test_muon_trains_only_the_mixers_projection_matrices():
    variant, config = cf.tiny("ssm")
    model = cf.build(variant, config)
    groups = {g.name: g for g in model.param_groups(config)}
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[id(p)].split(".")[-2] for p in groups["matrix"].params if ".attn." in names[id(p)]}
    assert muon == {"in_proj", "dt_proj", "out_proj"}
    assert {names[id(p)].split(".")[-1] for p in groups["ssm_scalars"].params} == {
        "conv_weight", "conv_bias", "dt_bias", "A_log", "D"}


@pytest.mark.parametrize("num_layers,attn_every,expected", [(9, 4, [3, 7]), (9, 2, [1, 3, 5, 7]), (2, 4, [1]),
                                                            (1, 4, []), (8, 3, [2, 5])])
def test_hybrid_puts_attention_at_every_kth_layer(num_layers, attn_every, expected):
    variant, config = cf.tiny("hybrid", num_layers=num_layers, attn_every=attn_every)
    model = cf.build(variant, config)
    assert [i for i, block in enumerate(model.blocks) if not isinstance(block.attn, SSMMixer)] == expected
