"""The byte accounting and val_bpb against hand counts."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from harness.data.shards import write_shard
from harness.data.tokenizers import ByteTables, byte_tokenizer, sentencepiece_tokenizer
from harness.metric import ScoredModel, evaluate, load_validation


@pytest.fixture(scope="module")
def small_sp(tmp_path_factory):
    """A real SentencePiece model with the challenge's settings, trained on a few sentences."""
    import sentencepiece as spm

    d = tmp_path_factory.mktemp("sp")
    text = ("the quick brown fox jumps over the lazy dog. " * 20 + "hello world, 12345 numbers and words.\n") * 5
    (d / "train.txt").write_text(text)
    spm.SentencePieceTrainer.train(input=str(d / "train.txt"), model_prefix=str(d / "tok"), model_type="bpe",
                                   vocab_size=300, byte_fallback=True, split_digits=True,
                                   normalization_rule_name="nmt_nfkc", add_dummy_prefix=False, pad_id=0, bos_id=1,
                                   eos_id=2, unk_id=3, hard_vocab_limit=False, minloglevel=2)
    return d / "tok.model"


def test_hand_built_table_counts_bytes_like_the_challenge():
    # ids: 0 <pad>, 1 <s>, 2 </s>, 3 <unk>, 4 "▁ab", 5 "c", 6 "▁é", 7 byte <0xC3>
    tables = ByteTables(base_bytes=np.array([0, 0, 0, 0, 2, 1, 2, 1], dtype=np.int16),
                        has_leading_space=np.array([0, 0, 0, 0, 1, 0, 1, 0], dtype=bool),
                        is_boundary=np.array([1, 1, 1, 1, 0, 0, 0, 0], dtype=bool))
    prev = np.array([1, 4, 5, 6, 7, 2])
    target = np.array([4, 5, 6, 7, 4, 1])
    # "▁ab" after <s>: 2 (space not counted); "c": 1; "▁é" after "c": 2 + 1; byte: 1; "▁ab" after byte: 2 + 1;
    # <s> after </s>: 0
    assert tables.count_bytes(prev, target) == 2 + 1 + 3 + 1 + 3 + 0


def test_sentencepiece_tables_count_exactly_the_utf8_bytes_of_the_text(small_sp):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(small_sp))
    tok = sentencepiece_tokenizer(small_sp)
    docs = ["the quick brown fox", "héllo wörld 2024, naïve café", "lazy dog jumps"]  # é, ö, ï: byte fallback
    ids = np.concatenate([[sp.bos_id(), *sp.encode(d)] for d in docs])
    assert any(sp.is_byte(int(i)) for i in ids), "the test text must exercise byte-fallback pieces"
    # Each document follows a BOS, so its leading piece's space is never counted: bytes = UTF-8 length.
    assert tok.tables.count_bytes(ids[:-1], ids[1:]) == sum(len(d.encode("utf-8")) for d in docs)
    assert tok.vocab_size == sp.vocab_size()
    assert tok.tables.base_bytes[sp.bos_id()] == 0 and tok.tables.is_boundary[sp.unk_id()]


class Uniform(nn.Module):
    """Logits that are all equal: the loss of every token is exactly ln(vocab)."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return torch.zeros(*x.shape, self.vocab) + self.dummy


def test_val_bpb_is_loss_in_bits_times_tokens_per_byte(tmp_path):
    tok = byte_tokenizer()
    rng = np.random.default_rng(0)
    stream = np.concatenate([[1], rng.integers(4, 260, size=999)])  # BOS then byte tokens
    write_shard(tmp_path / "v_val_000000.bin", stream)
    val = load_validation([tmp_path / "v_val_000000.bin"], seq_len=100, cap_tokens=0, tables=tok.tables)
    assert val.target_tokens == 900 and val.target_bytes == 900  # every target is a byte token
    loss, bpb = evaluate(ScoredModel(Uniform(260)), val, 300, 0, 1, torch.device("cpu"), None)
    assert loss == pytest.approx(math.log(260), rel=1e-6)
    assert bpb == pytest.approx(math.log2(260) * 900 / 900, rel=1e-6)


def test_ranks_split_the_validation_set_and_sum_to_the_whole(tmp_path):
    tok = byte_tokenizer()
    write_shard(tmp_path / "v_val_000000.bin", np.arange(4, 4 + 1001) % 256 + 4)
    val = load_validation([tmp_path / "v_val_000000.bin"], seq_len=50, cap_tokens=0, tables=tok.tables)

    class Peek(Uniform):
        seen = 0

        def forward(self, x):
            Peek.seen += x.numel()
            return super().forward(x)

    for rank in range(3):
        evaluate(ScoredModel(Peek(260)), val, 100, rank, 3, torch.device("cpu"), None)
    assert Peek.seen == val.target_tokens == 1000


def test_validation_cap_limits_the_tokens_scored(tmp_path):
    tok = byte_tokenizer()
    write_shard(tmp_path / "v_val_000000.bin", np.full(5000, 10))
    val = load_validation([tmp_path / "v_val_000000.bin"], seq_len=64, cap_tokens=1000, tables=tok.tables)
    assert val.target_tokens == 960 and val.tokens.numel() == 961
