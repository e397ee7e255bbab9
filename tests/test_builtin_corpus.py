import sentencepiece as spm

from harness.data import builtin
from harness.data.datasets import resolve_dataset
from harness.data.shards import read_shard


def test_documents_come_in_a_fixed_order_with_validation_first():
    sources = builtin._stdlib_sources()[:40]
    docs = builtin.collect_documents(sources)
    assert docs == builtin.collect_documents(sources)
    assert any(t.startswith("topic:") for t, _ in docs) and any(t.startswith("module:") for t, _ in docs)
    val, train = builtin.split_documents(docs)
    assert val == [t for _, t in docs[:len(val)]] and len(val) + len(train) == len(docs)


def test_builtin_dataset_uses_the_challenge_tokenizer_settings_and_bos_per_document():
    ds = resolve_dataset("builtin", log=lambda *_: None)
    sp = spm.SentencePieceProcessor(model_file=ds.tokenizer.path)
    assert sp.vocab_size() == 1024 and ds.tokenizer.vocab_size == 1024
    assert (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2, 3)
    assert sum(sp.is_byte(i) for i in range(1024)) == 256  # byte fallback
    val = read_shard(ds.val_files[0])
    assert val[0] == sp.bos_id()
    assert (val == sp.bos_id()).sum() == ds.meta["val_documents"]
    assert resolve_dataset("builtin").content_hash == ds.content_hash  # cached: built once


def test_the_builtin_dataset_records_the_hash_of_its_tokenizer():
    ds = resolve_dataset("builtin", log=lambda *_: None)
    assert ds.meta["tokenizer_sha256"] == ds.tokenizer.content_hash
    assert ds.tokenizer_check == "sha256 recorded with the dataset"
