"""Ternary weights and the variant-owned storage they use: trits packed five a byte, straight-through gradients,
an artifact round trip that changes no output, fewer bytes than int8, and no change for models without it."""

import copy
import io
import sys
import zlib

import conformance as cf
import pytest
import torch
import torch.nn.functional as F

from harness import artifact, hooks
from harness.model import GPT, GPTConfig
from harness.ternary import BitLinear, ternarize


@pytest.mark.parametrize("count", [0, 1, 4, 5, 6, 7, 13, 1001])
def test_trits_survive_packing_five_to_a_byte(count):
    trits = torch.randint(-1, 2, (count,), generator=torch.Generator().manual_seed(count)).to(torch.int8)
    packed = artifact.pack_trits(trits)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-count // 5)
    assert torch.equal(artifact.unpack_trits(packed, count), trits)


def test_gradients_pass_straight_through_both_roundings():
    torch.manual_seed(0)
    layer = BitLinear(16, 8)
    x = torch.randn(3, 16, requires_grad=True)
    layer(x).square().sum().backward()
    t, gamma = ternarize(layer.weight)
    assert set(t.unique().tolist()) <= {-1.0, 0.0, 1.0} and gamma > 0
    w, xq = (t * gamma).detach().requires_grad_(), x.detach().clone().requires_grad_()
    F.linear(xq, w).square().sum().backward()  # the same loss at the quantised values, no STE: close gradients
    assert layer.weight.grad is not None and x.grad is not None
    assert torch.allclose(layer.weight.grad, w.grad, rtol=0.1, atol=0.05)
    assert torch.allclose(x.grad, xq.grad, rtol=0.1, atol=0.05)


@pytest.fixture(scope="module")
def trained_bitnet():
    variant, config = cf.tiny("bitnet", num_layers=1)
    model = cf.build(variant, config)
    cf.train(model, config, [cf.copy_pairs(config, 8, seed=s) for s in range(3)])  # move the zero-init matrices
    return variant, config, model


def test_bitnet_round_trip_gives_the_trained_logits_and_loss(trained_bitnet):
    variant, config, model = trained_bitnet
    state = hooks.exported_state(model)
    assert isinstance(state, artifact.CodedState) and "blocks.0.attn.c_q.weight" in state.codecs
    blob = artifact.compress(state)
    restored = artifact.restore(variant.build, config, blob)
    # The embedding and the small tensors take the int8/fp16 path as in every model: give the trained model
    # those values too, keeping its latent weights, so that what is compared is the ternary export alone.
    back = artifact.decompress(blob)
    model = copy.deepcopy(model)
    model.load_state_dict({k: v for k, v in back.items() if k not in state.codecs}, strict=False)
    x, y = cf.copy_pairs(config, 4, seed=9)
    model.eval(), restored.eval()
    before, after = cf.logits_of(model, x), cf.logits_of(restored, x)
    assert torch.allclose(before, after, rtol=1e-5, atol=1e-5)
    loss = [F.cross_entropy(lg.reshape(-1, config.vocab_size), y.reshape(-1)).item() for lg in (before, after)]
    assert loss[0] == pytest.approx(loss[1], abs=1e-6)
    for name in state.codecs:  # the latent weights are not what comes back: their ternary form is
        assert restored.state_dict()[name].unique().numel() <= 3


def test_trits_cost_fewer_bytes_than_int8(trained_bitnet):
    _, _, model = trained_bitnet
    state = hooks.exported_state(model)
    assert len(artifact.compress(state)) < len(artifact.compress(dict(state)))  # a plain dict: all int8


def test_a_tensor_that_is_not_ternary_is_refused():
    state = {"w": torch.tensor([0.5, -0.5, 0.25])}
    with pytest.raises(ValueError, match="not ternary"):
        artifact.compress(artifact.CodedState(state, {"w": "ternary"}))


def test_models_without_the_hook_keep_the_challenges_int8_bytes():
    model = GPT(GPTConfig(num_layers=1, model_dim=32, num_heads=2, num_kv_heads=1, vocab_size=64))
    state = hooks.exported_state(model)
    buf = io.BytesIO()
    torch.save(artifact.quantize_state_dict(model.state_dict()), buf)  # the challenge's export, as before the hook
    assert type(state) is dict and artifact.compress(state) == zlib.compress(buf.getvalue(), level=9)


def test_the_mlgru_scan_matches_the_recurrence_across_chunks():
    cf.tiny("matmul_free")
    scan = sys.modules["variants.matmul_free"].linear_scan
    g = torch.Generator().manual_seed(0)
    log_f = torch.nn.functional.logsigmoid(3 * torch.randn(2, 70, 3, generator=g)).clamp_min(-5.0)
    u = torch.randn(2, 70, 3, generator=g)
    h, expected = torch.zeros(2, 3), []
    for t in range(70):
        h = log_f[:, t].exp() * h + u[:, t]
        expected.append(h)
    assert torch.allclose(scan(log_f, u), torch.stack(expected, dim=1), rtol=1e-4, atol=1e-5)
