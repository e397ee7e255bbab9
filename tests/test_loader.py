import numpy as np
import pytest
import torch

from harness.data.loader import DistributedTokenLoader, plan_accumulation
from harness.data.shards import write_shard
from harness.errors import UserError


@pytest.fixture
def shards(tmp_path):
    files = []
    for i, n in enumerate((1000, 700)):
        path = tmp_path / f"d_train_{i:06d}.bin"
        write_shard(path, (np.arange(n) + 1000 * i) % 60000)
        files.append(path)
    return tuple(files)


def tokens_of_step(files, world_size, accumulation, steps, tokens_per_step=256, seq_len=16):
    """Every (x, y) pair any rank sees in each step, in a canonical order."""
    loaders = [DistributedTokenLoader(files, r, world_size, torch.device("cpu")) for r in range(world_size)]
    seen = []
    for _ in range(steps):
        step = []
        for _ in range(accumulation):
            for loader in loaders:
                x, y = loader.next_batch(tokens_per_step, seq_len, accumulation)
                assert x.shape == y.shape and x.numel() == tokens_per_step // (world_size * accumulation)
                assert torch.equal(x[:, 1:], y[:, :-1])
                step.append(torch.stack([x, y]))
        seen.append(torch.cat(step, dim=1))
    return seen


def test_global_batch_is_identical_for_any_split_of_ranks_and_accumulation(shards):
    reference = tokens_of_step(shards, 1, 4, steps=9)  # crosses the shard boundary and wraps around
    for world, accum in ((2, 2), (4, 1), (1, 2 * 2)):
        for a, b in zip(reference, tokens_of_step(shards, world, accum, steps=9)):
            assert torch.equal(a, b)


def test_ranks_get_disjoint_spans(shards):
    a = DistributedTokenLoader(shards, 0, 2, torch.device("cpu")).next_batch(256, 16, 1)[0]
    b = DistributedTokenLoader(shards, 1, 2, torch.device("cpu")).next_batch(256, 16, 1)[0]
    assert not set(a.flatten().tolist()) & set(b.flatten().tolist())


def test_accumulation_plan_keeps_micro_batches_whole_sequences():
    assert plan_accumulation(524288, 65536, 1024, 1) == 8
    assert plan_accumulation(524288, 65536, 1024, 8) == 1
    assert plan_accumulation(524288, 65536, 1024, 2) == 4
    assert plan_accumulation(3 * 1024 * 4, 2048, 1024, 3) == 2


def test_batch_not_divisible_by_seq_len_times_ranks_is_a_user_error():
    with pytest.raises(UserError, match="not divisible by seq_len"):
        plan_accumulation(1000, 1000, 64, 1)
    with pytest.raises(UserError, match="3 rank"):
        plan_accumulation(1024, 1024, 64, 3)
