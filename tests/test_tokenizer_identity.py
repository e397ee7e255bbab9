"""A dataset is scored only with the tokenizer its shards were made with: val_bpb divides by the bytes each token
stands for, so a foreign tokenizer of the same size scores the same ids against the wrong byte counts (a
1,024-token tokenizer trained on other text once scored 1.61 instead of 4.03)."""

import json
import shutil

import pytest
import sentencepiece as spm

from conftest import harness_main, write_budget
from harness.data.datasets import from_directory, resolve_dataset
from harness.data.tokenizers import round_trip_agreement, sentencepiece_tokenizer
from harness.errors import UserError


@pytest.fixture(scope="module")
def foreign_tokenizer(tmp_path_factory):
    """A 1,024-piece BPE with the builtin tokenizer's settings, trained on other text (this repo's own code)."""
    from harness import REPO_ROOT
    from harness.data.builtin import SP_SETTINGS

    out = tmp_path_factory.mktemp("foreign")
    lines = [line for p in sorted(REPO_ROOT.glob("harness/**/*.py")) for line in p.read_text().splitlines()
             if line.strip()]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(out / "foreign_1024_bpe"),
                                   minloglevel=2, **SP_SETTINGS)
    return out / "foreign_1024_bpe.model"


@pytest.fixture(scope="module")
def unrecorded_copy(tmp_path_factory):
    """The builtin shards and tokenizer in a folder without meta.json: nothing recorded about the tokenizer."""
    ds = resolve_dataset("builtin", log=lambda *_: None)
    out = tmp_path_factory.mktemp("copy") / "shards"
    out.mkdir()
    for p in (*ds.train_files, *ds.val_files, ds.tokenizer.path):
        shutil.copy(p, out)
    return out


def test_a_foreign_tokenizer_is_refused_where_the_dataset_recorded_its_own(tmp_path, foreign_tokenizer):
    ds = resolve_dataset("builtin", log=lambda *_: None)
    budget = write_budget(tmp_path / "b.toml")
    result = harness_main("run", "--variant", "baseline", "--budget", str(budget), "--data-dir", str(ds.directory),
                          "--tokenizer", str(foreign_tokenizer), "--results-dir", str(tmp_path / "r"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "was tokenized with a tokenizer of sha256" in result.stderr and "--tokenizer" in result.stderr
    assert not (tmp_path / "r").exists()


def test_without_a_record_the_round_trip_tells_the_right_tokenizer_from_a_foreign_one(unrecorded_copy,
                                                                                      foreign_tokenizer):
    own = from_directory(unrecorded_copy, "copy")
    assert own.tokenizer_check.startswith("round trip of 8,192 validation tokens")
    sample = own.val_files[0]
    from harness.data.shards import read_shard

    tokens = read_shard(sample)[:8192]
    assert round_trip_agreement(own.tokenizer, tokens) == 1.0
    foreign = sentencepiece_tokenizer(foreign_tokenizer)
    assert foreign.vocab_size == own.tokenizer.vocab_size
    assert round_trip_agreement(foreign, tokens) < 0.95  # ~0.89: its own ids are canonical, these are not
    with pytest.raises(UserError, match="does not fit dataset"):
        from_directory(unrecorded_copy, "copy", foreign_tokenizer)


def test_a_recorded_hash_that_disagrees_is_named(unrecorded_copy, tmp_path):
    shutil.copytree(unrecorded_copy, tmp_path / "d")
    (tmp_path / "d" / "meta.json").write_text(json.dumps({"tokenizer_sha256": "f" * 64}))
    with pytest.raises(UserError, match="sha256 ffffffffffff"):
        from_directory(tmp_path / "d", "d")
