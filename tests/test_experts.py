"""Expert routing (harness/experts.py, variants moe and micro): the selection rules on hand-made probabilities,
the training-only losses, and the evaluation statistics behind `metrics()`. Tiny sizes, CPU."""

import conformance as cf
import pytest
import torch

from harness.errors import UserError
from harness.experts import Experts, gate_weights, routing_mask

# Experts in a shuffled order of probability: 2 (0.5) > 0 (0.3) > 3 (0.15) > 1 (0.05).
PROBS = torch.tensor([[0.3, 0.05, 0.5, 0.15]])


@pytest.mark.parametrize("p,expected", [
    (0.001, [0, 0, 1, 0]),  # far below the largest probability: still one expert
    (0.45, [0, 0, 1, 0]),
    (0.79, [1, 0, 1, 0]),
    (0.9, [1, 0, 1, 1]),  # 0.5 + 0.3 = 0.8 falls short; 0.95 reaches it
    (1.0, [1, 1, 1, 1]),
])
def test_top_p_picks_the_smallest_prefix_by_probability_that_reaches_p(p, expected):
    assert routing_mask(PROBS, top_p=p).tolist() == [expected]


def test_top_p_takes_a_threshold_per_token_and_always_at_least_one_expert():
    probs = torch.tensor([[0.3, 0.05, 0.5, 0.15], [0.25, 0.25, 0.25, 0.25], [0.97, 0.01, 0.01, 0.01]])
    mask = routing_mask(probs, top_p=torch.tensor([[0.6], [0.6], [0.6]]))
    assert mask.tolist() == [[1, 0, 1, 0], [1, 1, 1, 0], [1, 0, 0, 0]]  # ties go to the lower index
    assert (routing_mask(torch.rand(64, 8).softmax(-1), top_p=1e-6).sum(-1) == 1).all()


@pytest.mark.parametrize("k,expected", [(1, [0, 0, 1, 0]), (2, [1, 0, 1, 0]), (4, [1, 1, 1, 1])])
def test_top_k_picks_the_k_most_probable_experts(k, expected):
    assert routing_mask(PROBS, top_k=k).tolist() == [expected]


def test_gates_are_the_chosen_probabilities_renormalised_and_a_lone_expert_still_trains_the_router():
    gates = gate_weights(PROBS, routing_mask(PROBS, top_k=2))
    assert torch.allclose(gates, torch.tensor([[0.375, 0.0, 0.625, 0.0]]))
    logits = PROBS.log().clone().requires_grad_()
    probs = logits.softmax(-1)
    gate = gate_weights(probs, routing_mask(probs, top_k=1))
    assert gate.tolist() == [[0.0, 0.0, 1.0, 0.0]]
    (gate * torch.tensor([[0.0, 0.0, 2.0, 0.0]])).sum().backward()
    assert logits.grad.abs().sum() > 0


def test_a_token_gets_the_gated_sum_of_its_own_experts_and_nothing_of_the_others():
    torch.manual_seed(0)
    experts = Experts(dim=8, hidden=4, num_experts=3)
    torch.nn.init.normal_(experts.proj.weight)  # zero at init
    x = torch.randn(2, 5, 8)
    gates = torch.tensor([0.25, 0.0, 0.75]).expand(2, 5, 3)
    fc, proj = experts.fc.weight.view(3, 4, 8), experts.proj.weight.view(8, 3, 4)
    expected = sum(gates[..., e, None] * (torch.relu(x @ fc[e].T).square() @ proj[:, e].T) for e in range(3))
    assert torch.allclose(experts(x, gates), expected, atol=1e-5)
    experts(x, gates).sum().backward()
    assert experts.fc.weight.grad.view(3, 4, 8)[1].abs().sum() == 0  # an unselected expert: in the graph, unmoved


def test_layer_p_falls_linearly_from_the_first_layer_to_the_last_at_any_depth():
    variant, config = cf.tiny("moe", "layer_p", num_layers=5)
    assert [round(config.layer_threshold(i), 6) for i in range(5)] == [0.6, 0.5, 0.4, 0.3, 0.2]
    _, one = cf.tiny("moe", "layer_p", num_layers=1)
    assert one.layer_threshold(0) == 0.6
    model = cf.build(variant, config)
    assert [round(block.mlp.p, 6) for block in model.blocks] == [0.6, 0.5, 0.4, 0.3, 0.2]


@pytest.mark.parametrize("preset,losses", [
    ("top1", {"balance"}), ("topp04", {"balance", "dynamic"}), ("learned_p", {"balance", "dynamic", "expert_count"}),
])
def test_routing_losses_appear_in_training_only(preset, losses):
    variant, config = cf.tiny("moe", preset)
    model = cf.build(variant, config)
    x = cf.random_tokens(config)
    model.train()
    logits, terms = model(x)
    assert set(terms) == losses and all(t.ndim == 0 and t.item() > 0 for t in terms.values())
    model.eval()
    with torch.no_grad():
        assert isinstance(model(x), torch.Tensor)


def test_learned_threshold_stays_in_range_and_gets_a_gradient():
    variant, config = cf.tiny("moe", "learned_p", num_layers=1)
    model = cf.build(variant, config)
    model.train()
    logits, terms = model(cf.random_tokens(config))
    (logits.square().mean() + sum(terms.values())).backward()
    mlp = model.blocks[0].mlp
    assert mlp.threshold_bias.grad is not None and mlp.threshold_bias.grad.abs() > 0
    model.eval()
    with torch.no_grad():
        model(cf.random_tokens(config))
    p = model.metrics()["layer0.mean_p"]
    assert config.p_min < p < 1.0 and abs(p - config.top_p) < 1e-6  # the head starts at top_p


def test_metrics_report_the_last_evaluation_and_reset_on_eval():
    variant, config = cf.tiny("moe", "topp04")
    model = cf.build(variant, config)
    assert model.metrics() == {}
    model.eval()
    with torch.no_grad():
        model(cf.random_tokens(config))
    metrics = model.metrics()
    for layer in range(config.num_layers):
        loads = [metrics[f"layer{layer}.expert_load.{e}"] for e in range(config.num_experts)]
        assert abs(sum(loads) - 1) < 1e-9 and min(loads) >= 0
        assert 0 < metrics[f"layer{layer}.router_entropy"] <= torch.log(torch.tensor(4.0)).item() + 1e-6
        assert 1 <= metrics[f"layer{layer}.experts_per_token"] <= config.num_experts
    assert metrics["sparse_compute_fraction"] == pytest.approx(metrics["experts_per_token"] / config.num_experts)
    model.train()
    model.eval()
    assert model.metrics() == {}
    with torch.no_grad():
        model(cf.random_tokens(config, seed=1))
    assert model.metrics().keys() == metrics.keys()


def test_micro_routes_each_token_to_one_specialist_or_mixes_them_all():
    for preset, per_token in ((None, 1.0), ("soft", 4.0)):
        variant, config = cf.tiny("micro", preset)
        model = cf.build(variant, config)
        model.eval()
        with torch.no_grad():
            model(cf.random_tokens(config))
        metrics = model.metrics()
        assert metrics["experts_per_token"] == per_token
        assert {k for k in metrics if k.startswith("layer0.expert_load")} == {f"layer0.expert_load.{e}" for e in
                                                                              range(4)}
    model.train()
    assert model(cf.random_tokens(config))[1] == {}  # soft, and no balancing by default: no extra loss


def test_config_mistakes_name_the_flag():
    with pytest.raises(UserError, match="--top-k 3 is more than --num-experts 2"):
        cf.tiny("moe", None, num_experts=2, top_k=3)
    with pytest.raises(UserError, match="--top-p 0.05"):
        cf.tiny("moe", "learned_p", top_p=0.05)
    with pytest.raises(UserError, match="--num-experts=5"):
        cf.tiny("micro", None, num_experts=5)
