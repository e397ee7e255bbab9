"""The evaluation schemes score every validation target exactly once, sliding windows at stride seq_len are the
standard scheme, and test-time training never trains on a target before it is scored."""

import copy
import math
from collections import Counter

import numpy as np
import pytest
import torch

from conftest import TINY_MODEL
from harness.data.tokenizers import ByteTables
from harness.errors import UserError
from harness.evaluation import EVAL_SCHEMES, EvalScheme, evaluate_scheme, sliding_plan
from harness.metric import ScoredModel, ValidationSet, evaluate
from harness.registry import get_variant

VOCAB = 512
CPU = torch.device("cpu")


def validation(num_targets: int, seq_len: int, seed: int = 0) -> ValidationSet:
    """Random distinct tokens, so that a target's value tells its position, and random byte tables."""
    rng = np.random.default_rng(seed)
    tokens = rng.permutation(VOCAB)[:num_targets + 1].astype(np.int32)
    tables = ByteTables(base_bytes=rng.integers(1, 5, VOCAB).astype(np.int16),
                        has_leading_space=rng.random(VOCAB) < 0.3, is_boundary=np.arange(VOCAB) == 0)
    return ValidationSet(torch.from_numpy(tokens), seq_len, num_targets,
                         tables.count_bytes(tokens[:-1], tokens[1:]))


class Recorded(ScoredModel):
    """The harness's ScoredModel, noting which target positions each call scores (train=False) or trains on."""

    def __init__(self, model, val: ValidationSet):
        super().__init__(model)
        self.position = {int(v): i - 1 for i, v in enumerate(val.tokens.tolist())}  # target index of a value
        self.events: list[tuple[str, list[int]]] = []

    def forward(self, x, y, train=True, score_from=None):
        first = torch.zeros(y.size(0), dtype=torch.long) if score_from is None else score_from
        targets = [self.position[int(v)] for row, f in zip(y.tolist(), first.tolist()) for v in row[f:]]
        self.events.append(("train" if train else "score", targets))
        return super().forward(x, y, train, score_from)


@pytest.fixture(scope="module")
def tiny_model():
    variant, _ = get_variant("baseline")
    config = variant.resolve(None, None, {**TINY_MODEL, "vocab_size": VOCAB})
    torch.manual_seed(0)
    return variant.construct(config)


def run(model, val, scheme, rank=0, world_size=1, batch_tokens=128):
    scored = Recorded(copy.deepcopy(model), val)  # a copy each: test-time training changes the weights
    return (*evaluate_scheme(scored, val, scheme, batch_tokens, rank, world_size, CPU, None), scored)


@pytest.mark.parametrize("num_targets,seq_len,stride,first,stop", [
    (256, 32, 8, 0, None), (250, 32, 7, 0, None), (256, 32, 32, 0, None), (96, 32, 1, 0, None),
    (256, 32, 5, 64, 160), (256, 32, 32, 32, 256), (33, 32, 4, 0, None)])
def test_sliding_plan_scores_each_target_once_with_full_windows(num_targets, seq_len, stride, first, stop):
    stop = num_targets if stop is None else stop
    plan = sliding_plan(num_targets, seq_len, stride, first, stop)
    scored = [w + t for w, f in plan for t in range(f, seq_len)]
    assert scored == list(range(first, stop))  # in order, each once
    assert all(0 <= w and w + seq_len <= num_targets for w, _ in plan)
    later = [f for w, f in plan if w + f >= seq_len]  # past the first window: at least seq_len - stride context
    assert all(seq_len - stride <= f for f in later)


@pytest.mark.parametrize("scheme_name", EVAL_SCHEMES)
@pytest.mark.parametrize("num_targets,seq_len,stride,chunk", [(480, 32, 8, 96), (256, 64, 24, 128),
                                                              (480, 32, 32, 160), (96, 32, 1, 64)])
@pytest.mark.parametrize("world_size", [1, 3])  # 3: uneven shares, and empty ones in a TTT step
def test_every_target_is_scored_exactly_once_over_all_ranks(tiny_model, scheme_name, num_targets, seq_len, stride,
                                                            chunk, world_size):
    val = validation(num_targets, seq_len)
    scheme = EvalScheme(name=scheme_name, stride=stride, ttt_chunk_tokens=chunk, ttt_epochs=1, ttt_batch_seqs=2)
    counts, total = Counter(), 0
    for rank in range(world_size):
        _, _, info, scored = run(tiny_model, val, scheme, rank, world_size)
        counts.update(t for kind, targets in scored.events if kind == "score" for t in targets)
        total += info["targets_scored"]
    assert counts == Counter(range(num_targets)) and total == num_targets


def test_sliding_at_stride_seq_len_is_the_standard_scheme_exactly(tiny_model):
    val = validation(480, 32)
    for rank, world_size, batch_tokens in [(0, 1, 128), (0, 1, 100), (1, 3, 64)]:
        scored = ScoredModel(tiny_model)
        standard = evaluate(scored, val, batch_tokens, rank, world_size, CPU, None)
        sliding = evaluate_scheme(scored, val, EvalScheme("sliding", stride=32), batch_tokens, rank, world_size,
                                  CPU, None)
        assert sliding[:2] == standard
        assert evaluate_scheme(scored, val, EvalScheme(), batch_tokens, rank, world_size, CPU, None)[:2] == standard


@pytest.mark.parametrize("world_size", [1, 2])
def test_ttt_trains_only_on_scored_targets_and_never_on_the_last_chunk(tiny_model, world_size):
    val, chunk = validation(480, 32), 96
    scheme = EvalScheme("ttt", stride=8, ttt_chunk_tokens=chunk, ttt_epochs=2, ttt_batch_seqs=2, ttt_lr=0.05)
    scored_by_chunk = Counter()
    for rank in range(world_size):
        _, _, info, scored = run(tiny_model, val, scheme, rank, world_size)
        current = -1  # the chunk this rank scored last
        for kind, targets in scored.events:
            (k,) = {t // chunk for t in targets}
            if kind == "score":
                assert k >= current, "scored an earlier chunk after a later one"
                current = k
                scored_by_chunk[k] += len(targets)
            else:  # the chunk every rank has just scored (the ranks' shares meet in the step's gradient all-reduce)
                assert k == current, "trained on a chunk other than the one just scored"
                assert k < 480 // chunk - 1, "trained on the last chunk"
        assert info["chunks"] == 5 and info["ttt_steps"] == 4 * 2 * 2 and not info["ttt_stopped_early"]
    assert scored_by_chunk == {k: chunk for k in range(5)}  # the ranks together score each chunk whole


def test_ttt_that_learns_nothing_gives_the_sliding_score(tiny_model):
    val = validation(480, 32)
    sliding, _, _, _ = run(tiny_model, val, EvalScheme("sliding", stride=8))
    for changes in [{"ttt_epochs": 0}, {"ttt_lr": 0.0}]:
        loss, _, info, _ = run(tiny_model, val, EvalScheme("ttt", stride=8, ttt_chunk_tokens=96, **changes))
        assert loss == pytest.approx(sliding, rel=1e-6)
    trained, _, _, _ = run(tiny_model, val, EvalScheme("ttt", stride=8, ttt_chunk_tokens=96, ttt_lr=0.05))
    assert trained != pytest.approx(sliding, rel=1e-6)  # and the same scheme that learns changes the score


def test_ttt_time_limit_stops_training_and_scores_the_rest(tiny_model):
    val = validation(480, 32)
    untrained = run(tiny_model, val, EvalScheme("ttt", stride=8, ttt_chunk_tokens=96, ttt_epochs=0))
    loss, bpb, info, scored = run(tiny_model, val, EvalScheme("ttt", stride=8, ttt_chunk_tokens=96,
                                                               time_limit_seconds=0))
    assert info["ttt_steps"] == 0 and info["ttt_stopped_early"] and info["targets_scored"] == 480
    assert not [kind for kind, _ in scored.events if kind == "train"]
    assert (loss, bpb) == untrained[:2]
    assert all(torch.equal(a, b) for a, b in zip(scored.model.state_dict().values(),
                                                 tiny_model.state_dict().values()))


@pytest.mark.parametrize("changes,flag", [
    ({"name": "beam"}, "--eval="), ({"stride": 0}, "--eval-stride"), ({"ttt_epochs": -1}, "--ttt-epochs"),
    ({"ttt_lr": math.nan}, "--ttt-lr"), ({"ttt_momentum": 1.0}, "--ttt-momentum"),
    ({"time_limit_seconds": -1.0}, "--eval-time-limit-seconds"), ({"ttt_chunk_tokens": 2.5}, "--ttt-chunk-tokens")])
def test_out_of_range_scheme_settings_are_user_errors(changes, flag):
    with pytest.raises(UserError, match=flag):
        EvalScheme(**changes)


def test_settings_that_do_not_fit_seq_len_are_user_errors(tiny_model):
    val = validation(96, 32)
    for scheme, flag in [(EvalScheme("sliding", stride=33), "--eval-stride"),
                         (EvalScheme("ttt", stride=8, ttt_chunk_tokens=100), "--ttt-chunk-tokens")]:
        with pytest.raises(UserError, match=flag):
            evaluate_scheme(ScoredModel(tiny_model), val, scheme, 128, 0, 1, CPU, None)
