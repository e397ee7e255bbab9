"""The baseline starts where the challenge's train_gpt.py starts, in the challenge's dtypes.

The fingerprints (shape, dtype, sum and sum of squares of every tensor of the step-0 state dict, seed 1337) were
computed from parameter-golf's own train_gpt.py (commit 4908dc4), its GPT built, seeded and cast as its main()
does, by `bench/vs_reference.py --reference train_gpt.py --steps 0 --write-fingerprints` — from the script
itself, not from this repository's code.
"""

import json
import math
from pathlib import Path

import pytest
import torch

from harness import precision
from harness.metric import ScoredModel
from harness.model import GPTConfig, Rotary
from harness.registry import get_variant
from harness.train import accumulate, build_model

FINGERPRINTS = Path(__file__).resolve().parent / "fixtures" / "reference_init_fingerprints.json"


def fingerprint(t: torch.Tensor) -> tuple[float, float]:
    t = t.detach().double()
    return t.sum().item(), t.square().sum().item()


def test_baseline_step0_state_dict_equals_the_challenges():
    reference = json.loads(FINGERPRINTS.read_text())
    baseline, _ = get_variant("baseline")
    state = build_model(baseline, GPTConfig(), reference["seed"], torch.device("cpu"), "challenge").state_dict()
    assert sorted(state) == sorted(reference["tensors"])
    wrong = []
    for name, want in reference["tensors"].items():
        t = state[name]
        total, squares = fingerprint(t)
        if (list(t.shape) != want["shape"] or str(t.dtype).removeprefix("torch.") != want["dtype"]
                or not math.isclose(total, want["sum"], rel_tol=1e-9, abs_tol=1e-9)
                or not math.isclose(squares, want["sum_sq"], rel_tol=1e-9)):
            wrong.append(name)
    assert wrong == [], f"{len(wrong)} of {len(state)} tensors start elsewhere than the challenge's: {wrong[:6]}"


def test_fp32_master_weights_start_from_the_same_values():
    baseline, _ = get_variant("baseline")
    c = GPTConfig(num_layers=2, model_dim=64, vocab_size=128)
    challenge = build_model(baseline, c, 7, torch.device("cpu"), "challenge").state_dict()
    fp32 = build_model(baseline, c, 7, torch.device("cpu"), "fp32").state_dict()
    assert challenge["tok_emb.weight"].dtype == torch.bfloat16 and fp32["tok_emb.weight"].dtype == torch.float32
    assert all(v.dtype == torch.float32 for k, v in challenge.items() if k != "tok_emb.weight")
    assert all(torch.equal(challenge[k].float(), fp32[k]) for k in fp32)


def test_challenge_precision_computes_rope_from_bf16_positions_as_the_challenge():
    """model.bfloat16() in train_gpt.py also makes RoPE's inverse frequencies bf16, so positions past 256 are
    rounded in the rotary tables; the harness reproduces it under the challenge's scheme and only there."""
    baseline, _ = get_variant("baseline")
    c = GPTConfig(num_layers=1, model_dim=64, num_heads=2, num_kv_heads=1, vocab_size=128)
    model = build_model(baseline, c, 0, torch.device("cpu"), "challenge")
    rotary = next(m for m in model.modules() if isinstance(m, Rotary))
    cos, _ = rotary(1024, torch.device("cpu"), torch.float32)
    positions = torch.arange(1024, dtype=torch.bfloat16).float()
    expected = torch.outer(positions.bfloat16(), rotary.inv_freq).cos().float()
    assert rotary.inv_freq.dtype == torch.bfloat16 and torch.equal(cos[0, 0], expected)
    assert positions[257] != 257  # the rounding is real: position 257 is not representable in bf16
    plain = Rotary(c.model_dim // c.num_heads, c.rope_base)
    assert not torch.equal(plain(1024, torch.device("cpu"), torch.float32)[0], cos)


@pytest.mark.parametrize("scheme", precision.PRECISIONS)
def test_a_training_step_runs_under_each_precision(scheme):
    baseline, _ = get_variant("baseline")
    c = GPTConfig(num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1, vocab_size=64)
    model = build_model(baseline, c, 0, torch.device("cpu"), scheme)
    x = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    loss = accumulate(ScoredModel(model), model, [(x, x)], 1, 1, torch.device("cpu"),
                      precision.compute_dtype("cpu", scheme))
    assert math.isfinite(loss.item())
    assert model.tok_emb.weight.grad.dtype == model.tok_emb.weight.dtype
