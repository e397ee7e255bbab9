"""Each technique does what its documentation says in training (the proof, in test_techniques.py, shows that
it does nothing at inference): the schedules' shapes, the averages exported, the noise undone, the sequences
cut and the tokens inserted and removed."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from harness.metric import ScoredModel
from harness.registry import get_variant
from harness.techniques import TechniqueStack, parse_with, resolve, train_steps
from harness.techniques.lr_schedule import LRScheduleConfig, multiplier
from harness.techniques.proof import proof_tables

TINY = {"vocab_size": 64, "model_dim": 32, "num_heads": 2, "num_kv_heads": 1, "mlp_mult": 2, "num_layers": 4}


def build(with_: str, flags: dict | None = None, seed: int = 0):
    variant, _ = get_variant("baseline")
    config = variant.resolve(None, None, TINY)
    torch.manual_seed(seed)
    model = variant.construct(config)
    with torch.no_grad():  # as if trained: the zero-initialised output projections pass signal (and gradients)
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    stack = TechniqueStack(resolve(parse_with(with_), flags or {}), model, config, {"tables": proof_tables(64)})
    return model, stack, ScoredModel(model, stack)


def batch(rows: int = 4, length: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 64, (rows, length + 1), generator=torch.Generator().manual_seed(seed))


def block_lengths(model) -> list[tuple[int, int]]:
    """Records the (rows, length) of every input to the first block."""
    seen = []
    model.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[:2])))
    return seen


def test_lr_schedules_have_their_shapes():
    cosine = LRScheduleConfig("cosine")
    assert [round(multiplier(cosine, p, 1.0), 6) for p in (0.0, 0.5, 1.0)] == [1.0, 0.5, 0.0]
    wsd = LRScheduleConfig("wsd", lr_schedule_decay=0.2)
    assert multiplier(wsd, 0.79, 1.0) == 1.0 and multiplier(wsd, 0.9, 1.0) == pytest.approx(0.5)
    cyclic = LRScheduleConfig("cyclic", lr_schedule_cycles=2)
    assert multiplier(cyclic, 0.49, 1.0) < 0.01 and multiplier(cyclic, 0.5, 1.0) == 1.0  # the restart
    warm = LRScheduleConfig("warmdown", lr_schedule_warmup=0.1)
    assert multiplier(warm, 0.05, 0.7) == pytest.approx(0.35) and multiplier(warm, 0.5, 0.7) == 0.7
    exp = LRScheduleConfig("cosine", lr_schedule_warmup=0.1, lr_schedule_warmup_shape="exp")
    assert multiplier(exp, 0.0, 1.0) == pytest.approx(1e-3) and multiplier(exp, 0.05, 1.0) == pytest.approx(
        math.sqrt(1e-3) * 0.5 * (1 + math.cos(math.pi * 0.05)))
    floor = LRScheduleConfig("cosine", lr_schedule_floor=0.1)
    assert multiplier(floor, 1.0, 1.0) == pytest.approx(0.1)


def test_weight_average_exports_the_average_of_the_steps_it_saw():
    model, stack, scored = build("weight_average", {"weight_average_mode": "swa", "weight_average_start": 0.0})
    opt = torch.optim.SGD([p for p in scored.parameters() if p.requires_grad], lr=0.1)
    x = batch()
    seen = []
    for step in range(3):
        stack.start_step(model, step, 0.5)
        opt.zero_grad()
        loss, aux = scored(x[:, :-1], x[:, 1:])
        (loss + aux).backward()
        opt.step()
        stack.after_step(model, step)
        seen.append({k: v.detach().clone() for k, v in model.named_parameters()})
    stack.finish(model)
    for name, p in model.named_parameters():
        assert torch.allclose(p, sum(s[name] for s in seen) / 3, atol=1e-6), name


def test_weight_average_before_its_start_exports_the_last_weights():
    model, stack, scored = build("weight_average", {"weight_average_start": 0.9})
    train_steps(scored, stack, torch.optim.SGD(model.parameters(), lr=0.1), batch(), steps=2, progress=0.5)
    last = {k: v.detach().clone() for k, v in model.state_dict().items()}
    stack.finish(model)
    assert all(torch.equal(last[k], v) for k, v in model.state_dict().items())


def test_weight_noise_is_undone_before_the_optimizer_step_and_changes_the_gradient():
    model, stack, scored = build("weight_noise", {"weight_noise_std": 0.05})
    clean = {k: v.detach().clone() for k, v in model.state_dict().items()}
    x = batch()
    stack.start_step(model, 0, 0.5)
    assert any(not torch.equal(clean[k], v) for k, v in model.state_dict().items())  # noisy during the step
    loss, aux = scored(x[:, :-1], x[:, 1:])
    (loss + aux).backward()
    stack.after_backward(model)
    assert all(torch.equal(clean[k], v) for k, v in model.state_dict().items())  # exactly clean again
    noisy_grad = model.blocks[0].mlp.proj.weight.grad.clone()
    model.zero_grad()
    plain = ScoredModel(model)
    plain(x[:, :-1], x[:, 1:])[0].backward()
    assert noisy_grad.abs().sum() > 0 and not torch.allclose(noisy_grad, model.blocks[0].mlp.proj.weight.grad)


def test_grad_checkpoint_gives_the_same_gradients():
    grads = []
    for with_ in ("lr_schedule", "grad_checkpoint"):
        model, stack, scored = build(with_)
        x = batch()
        loss, aux = scored(x[:, :-1], x[:, 1:])
        (loss + aux).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


def test_seq_curriculum_grows_the_length_at_constant_tokens_per_step():
    model, stack, scored = build("seq_curriculum", {"seq_curriculum_levels": 2, "seq_curriculum_until": 0.6})
    seen = block_lengths(model)
    x = batch()
    for progress in (0.0, 0.29, 0.3, 0.59, 0.6, 0.9):
        stack.start_step(model, 0, progress)
        scored(x[:, :-1], x[:, 1:])
    # 256 tokens each step; the length doubles at even steps of progress, the full length from `until` on
    assert seen == [(16, 16), (16, 16), (8, 32), (8, 32), (4, 64), (4, 64)]
    model.eval()
    with torch.no_grad():
        scored(x[:, :-1], x[:, 1:], train=False)
    assert seen[-1] == (4, 64)


def test_seq_curriculum_multiscale_holds_several_lengths_in_one_step_weighted_by_tokens():
    model, stack, scored = build("seq_curriculum", {"seq_curriculum_mode": "multiscale", "seq_curriculum_levels": 2})
    seen = block_lengths(model)
    x = batch(rows=8)
    stack.start_step(model, 0, 0.5)
    loss, aux = scored(x[:, :-1], x[:, 1:])
    assert seen == [(4, 64), (4, 32), (8, 16)]  # half the rows whole, a quarter in halves, a quarter in quarters
    assert sum(r * n for r, n in seen) == 8 * 64
    # the objective is the mean over every token of the step, whatever length it was seen at
    per_pass = []
    with torch.no_grad():
        for xs, ys in ((x[:4, :-1], x[:4, 1:]), (x[4:6, :-1].reshape(4, 32), x[4:6, 1:].reshape(4, 32)),
                       (x[6:, :-1].reshape(8, 16), x[6:, 1:].reshape(8, 16))):
            per_pass.append(ScoredModel(model)(xs, ys)[0].item() * xs.numel())
    assert (loss + aux).item() == pytest.approx(sum(per_pass) / (8 * 64), rel=1e-5)


def test_planning_tokens_are_inserted_in_training_and_never_at_inference():
    model, stack, scored = build("planning_tokens", {"planning_tokens_every": 16, "planning_tokens_count": 2})
    seen = block_lengths(model)
    x = batch()
    logits = model(x[:, :-1])
    assert seen == [(4, 64 + 4 * 2)] and logits.shape[:2] == (4, 64)  # inserted, then removed before the loss
    loss, _ = scored(x[:, :-1], x[:, 1:])
    loss.backward()
    assert stack.parts["planning_tokens__vectors"].vectors.grad.abs().sum() > 0  # later tokens attend to them
    model.eval()
    with torch.no_grad():
        model(x[:, :-1])
    assert seen[-1] == (4, 64)


def test_planning_tokens_keep_causality_of_the_models_own_tokens():
    model, stack, _ = build("planning_tokens", {"planning_tokens_every": 8})
    x = batch(rows=1)[:, :-1]
    changed = x.clone()
    changed[0, 40] = (changed[0, 40] + 1) % 64
    with torch.no_grad():
        a, b = model(x), model(changed)
    assert torch.equal(a[0, :40], b[0, :40]) and not torch.equal(a[0, 40:], b[0, 40:])


def test_span_reconstruction_corrupts_early_and_switches_off():
    model, stack, scored = build("span_reconstruction", {"span_reconstruction_until": 0.5})
    x = batch()
    stack.start_step(model, 0, 0.0)
    corrupted, _ = stack.inputs(x[:, :-1], x[:, 1:])
    replaced = stack.techniques[0].replaced
    assert replaced.float().mean().item() == pytest.approx(0.15, abs=0.08) and not torch.equal(corrupted, x[:, :-1])
    assert torch.equal(corrupted[~replaced], x[:, :-1][~replaced])
    model(corrupted)
    assert stack.loss_terms(model, corrupted, x[:, 1:], None)["span_reconstruction.spans"].item() > 0
    stack.start_step(model, 1, 0.6)
    assert torch.equal(stack.inputs(x[:, :-1], x[:, 1:])[0], x[:, :-1])
    model(x[:, :-1])
    assert stack.loss_terms(model, x[:, :-1], x[:, 1:], None)["span_reconstruction.spans"].item() == 0.0


def test_self_distill_teacher_is_an_ema_never_trained_and_silent_before_its_start():
    model, stack, scored = build("self_distill", {"self_distill_decay": 0.5, "self_distill_start": 0.2})
    teacher = stack.parts["self_distill__teacher"].model
    scored.train()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    x = batch()
    stack.start_step(model, 0, 0.1)
    assert stack.loss_terms(model, x[:, :-1], x[:, 1:], model(x[:, :-1])) == {}
    stack.start_step(model, 0, 0.5)
    assert stack.loss_terms(model, x[:, :-1], x[:, 1:], model(x[:, :-1]))["self_distill.ema"].item() >= 0
    before = [t.detach().clone() for t in teacher.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    stack.after_step(model, 0)
    for old, t, s in zip(before, teacher.parameters(), model.parameters()):
        assert torch.allclose(t, 0.5 * old + 0.5 * s)


def test_self_distill_layers_teaches_the_earlier_blocks_toward_the_last():
    model, stack, _ = build("self_distill", {"self_distill_mode": "layers"})
    x = batch()
    stack.inputs(x[:, :-1], x[:, 1:])
    logits = model(x[:, :-1])
    term = stack.loss_terms(model, x[:, :-1], x[:, 1:], logits)["self_distill.layers"]
    term.backward()
    assert term.item() > 0 and model.blocks[0].mlp.fc.weight.grad.abs().sum() > 0


def test_token_attributes_predict_the_next_tokens_byte_length_and_word_start():
    model, stack, _ = build("token_attributes")
    head = stack.parts["token_attributes__head"]
    tables = proof_tables(64)
    assert head.length.tolist() == [min(b + s, 16) - 1 for b, s in zip(tables.base_bytes.tolist(),
                                                                        tables.has_leading_space.tolist())]
    x = batch()
    stack.inputs(x[:, :-1], x[:, 1:])
    model(x[:, :-1])
    terms = stack.loss_terms(model, x[:, :-1], x[:, 1:], None)
    # a zero-initialised head: uniform over 16 lengths, even odds for a word start
    assert terms["token_attributes.length"].item() == pytest.approx(0.1 * math.log(16), rel=1e-4)
    assert terms["token_attributes.word_start"].item() == pytest.approx(0.1 * math.log(2), rel=1e-4)


def test_token_attributes_without_byte_tables_is_refused():
    from harness.errors import UserError

    variant, _ = get_variant("baseline")
    config = variant.resolve(None, None, TINY)
    with pytest.raises(UserError, match="byte tables"):
        TechniqueStack(resolve(parse_with("token_attributes"), {}), variant.construct(config), config)


@pytest.mark.parametrize("with_,term", [("contrastive", "contrastive.pairs"),
                                       ("head_diversity", "head_diversity.cosine")])
def test_the_regularisers_add_a_positive_term_with_a_gradient(with_, term):
    model, stack, scored = build(with_)
    x = batch()
    loss, aux = scored(x[:, :-1], x[:, 1:])
    stack.inputs(x[:, :-1], x[:, 1:])
    logits = model(x[:, :-1])
    value = stack.loss_terms(model, x[:, :-1], x[:, 1:], logits)[term]
    assert value.item() > 0 and aux.item() > 0
    value.backward()
    assert model.blocks[0].attn.c_q.weight.grad.abs().sum() > 0


def test_token_dropout_zeroes_embeddings_in_training_only():
    model, stack, _ = build("embedding_noise", {"embedding_noise_std": 0.0, "embedding_noise_drop": 0.5})
    x = batch()[:, :-1]
    out = model.tok_emb(x)
    zero = (out.abs().sum(-1) == 0).float().mean().item()
    assert 0.3 < zero < 0.7
    model.eval()
    assert torch.equal(model.tok_emb(x), nn.functional.embedding(x, model.tok_emb.weight))


@pytest.mark.parametrize("progress", [0.0, 0.95])
@pytest.mark.parametrize("length", [16, 64])
def test_every_trained_technique_parameter_gets_a_gradient_every_step(progress, length):
    """Data-parallel training (DDP without unused-parameter search, as the trainer wraps it) fails on a trained
    parameter left without a gradient: early or late in training, short sequences or long, each gets one."""
    from harness.techniques import known_technique_names

    for technique in known_technique_names():
        model, stack, scored = build(technique)
        stack.start_step(model, 0, progress)
        x = batch(rows=2, length=length)
        loss, aux = scored(x[:, :-1], x[:, 1:])
        (loss + aux).backward()
        missing = [n for n, p in stack.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, (technique, missing)


def test_refine_twice_hands_the_other_techniques_the_output_that_made_the_logits():
    model, stack, _ = build("refine_twice,mtp")
    x = batch()
    stack.inputs(x[:, :-1], x[:, 1:])
    logits = model(x[:, :-1])
    assert torch.equal(model.logits(stack._hidden[-1]), logits)


@pytest.mark.parametrize("with_,term", [("activation_l1", "l1"), ("head_diversity", "cosine")])
def test_the_step_penalties_average_over_a_curriculums_passes(with_, term):
    flags = {"seq_curriculum_mode": "multiscale", "seq_curriculum_levels": 2}
    model, stack, _ = build(f"{with_},seq_curriculum", flags)
    x = batch(rows=8)
    stack.start_step(model, 0, 0.5)
    xs, ys = stack.inputs(x[:, :-1], x[:, 1:])
    value = stack.loss_terms(model, xs, ys, model(xs))[f"{with_}.{term}"].item()
    assert stack._hidden == []  # the extra passes' block outputs are not kept
    # the same penalty, one pass at a time, averaged over the three passes
    alone = TechniqueStack(resolve(parse_with(with_), {}), model, model.config)
    passes = (x[:4, :-1], x[4:6, :-1].reshape(4, 32), x[6:, :-1].reshape(8, 16))
    each = []
    for xp in passes:
        alone.inputs(xp, xp)
        model(xp)
        each.append(alone.loss_terms(model, xp, xp, None)[f"{with_}.{term}"].item())
    assert value == pytest.approx(sum(each) / len(each), rel=1e-5)


def test_self_distill_keeps_its_teacher_average_in_fp32():
    model, stack, _ = build("self_distill", {"self_distill_decay": 0.999})
    teacher = stack.parts["self_distill__teacher"]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-4)  # far below a bf16 step at these magnitudes
    stack.after_step(model, 0)
    assert all(getattr(teacher, f"average{i}").dtype == torch.float32 for i in range(3))
    moved = [float((getattr(teacher, f"average{i}") - t.float()).abs().max()) for i, t in
             enumerate(teacher.model.parameters())]
    assert max(moved) < 1e-6  # the teacher is its average (here fp32 weights: identical)
