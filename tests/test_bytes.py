"""The byte form of a token dataset (harness/data/bytes.py) and the bytes family's causal patching: the byte
form holds exactly the bytes the challenge counts for its source's tokens, is derived once and again when the
source changes, and a byte's logits never read a patch that holds a later byte."""

import json
import shutil

import conformance as cf
import numpy as np
import pytest
import torch

from harness.data import bytes as byte_data
from harness.data.datasets import resolve_dataset
from harness.data.shards import read_shard, write_shard
from harness.errors import UserError


@pytest.fixture(scope="module")
def builtin():
    return resolve_dataset("builtin", log=lambda *_: None)


def split_tokens(files) -> np.ndarray:
    return np.concatenate([np.asarray(read_shard(p)) for p in files]).astype(np.int64)


def test_byte_form_holds_the_challenges_byte_count_of_each_split(builtin, tmp_path):
    form = byte_data.byte_form(builtin, tmp_path, log=lambda *_: None)
    assert form.tokenizer.name == "byte260" and form.source is builtin and form.name == "builtin_bytes"
    for name, token_files, byte_files in (("val", builtin.val_files, form.val_files),
                                          ("train", builtin.train_files, form.train_files)):
        tokens, ids = split_tokens(token_files), split_tokens(byte_files)
        counted = builtin.tokenizer.tables.count_bytes(tokens[:-1], tokens[1:])
        assert form.tokenizer.tables.count_bytes(ids[:-1], ids[1:]) == counted == form.meta[f"{name}_bytes"]
    assert form.meta["source_content_hash"] == builtin.content_hash


def test_each_document_is_its_decoded_text(builtin, tmp_path):
    form = byte_data.byte_form(builtin, tmp_path, log=lambda *_: None)
    tokens, ids = split_tokens(builtin.val_files), split_tokens(form.val_files)
    sp, boundary = builtin.tokenizer.processor, builtin.tokenizer.tables.is_boundary
    token_docs = np.split(tokens, np.nonzero(boundary[tokens])[0])[1:]
    byte_docs = np.split(ids, np.nonzero(ids < 4)[0])[1:]
    assert len(token_docs) == len(byte_docs) > 10
    for doc, text in zip(token_docs, byte_docs):
        assert bytes((text[1:] - 4).tolist()) == sp.decode(doc[1:].tolist()).encode("utf-8")


def test_counts_agree_where_decoding_would_not(builtin):
    """A lone byte-fallback piece (invalid UTF-8: decode writes U+FFFD, 3 bytes) and a spaced piece after a
    boundary inside the stream (decode keeps the space, the challenge counts none)."""
    sp, tables = builtin.tokenizer.processor, builtin.tokenizer.tables
    a, lone, the = (sp.piece_to_id(p) for p in ("a", "<0xE2>", "\u2581the"))
    tokens = np.array([a, lone, sp.bos_id(), the, the])
    ids = byte_data.to_bytes(tokens, sp.bos_id(), byte_data.piece_bytes(builtin.tokenizer))
    assert ids.tolist() == [ord("a") + 4, 0xE2 + 4, 1, *(b + 4 for b in b"the the")]
    assert int((ids >= 4).sum()) == tables.count_bytes(np.concatenate(([sp.bos_id()], tokens[:-1])), tokens)


def test_derived_once_and_again_when_the_source_changes(builtin, tmp_path):
    source_dir = tmp_path / "copy"
    shutil.copytree(builtin.directory, source_dir)
    meta = json.loads((source_dir / "meta.json").read_text())
    del meta["content_hash"]  # hashed from the shards, so a changed shard changes it
    (source_dir / "meta.json").write_text(json.dumps(meta))
    logs = []
    first = resolve_dataset("builtin", tmp_path, data_dir=source_dir, form="bytes", log=logs.append)
    stamp = first.val_files[0].stat().st_mtime_ns
    again = resolve_dataset("builtin", tmp_path, data_dir=source_dir, form="bytes", log=logs.append)
    assert again.content_hash == first.content_hash and again.val_files[0].stat().st_mtime_ns == stamp
    assert len(logs) == 2  # one build: its start and end lines
    val = source_dir / builtin.val_files[0].name
    write_shard(val, np.asarray(read_shard(val))[:-100])
    changed = resolve_dataset("builtin", tmp_path, data_dir=source_dir, form="bytes", log=logs.append)
    assert changed.content_hash != first.content_hash and len(logs) == 4
    assert changed.meta["val_bytes"] < first.meta["val_bytes"]
    assert sorted(p.name for p in (tmp_path / "datasets").iterdir()) == [changed.directory.name]


def test_an_interrupted_build_leaves_nothing(builtin, tmp_path, monkeypatch):
    def fail(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(byte_data, "write_shard", fail)
    with pytest.raises(KeyboardInterrupt):
        byte_data.byte_form(builtin, tmp_path, log=lambda *_: None)
    assert list((tmp_path / "datasets").iterdir()) == []


def test_a_byte_dataset_is_its_own_byte_form_and_an_unknown_source_is_named():
    synthetic = resolve_dataset("synthetic", log=lambda *_: None)
    assert resolve_dataset("synthetic", form="bytes", log=lambda *_: None).directory == synthetic.directory
    with pytest.raises(UserError, match="'nosuch' is no token dataset"):
        resolve_dataset("nosuch_bytes")


@pytest.mark.parametrize("preset", [None, "entropy"])
def test_a_byte_reads_only_patches_that_ended_by_it(preset):
    """Patch ends at t depend on bytes ≤ t, and the latent slot byte t reads holds bytes ≤ t only."""
    variant, config = cf.tiny("bytes", preset)
    model = cf.build(variant, config).eval()
    from harness.conformance import randomize

    randomize(model)
    x = cf.random_tokens(config, batch=2, seq_len=96, seed=1)

    def ends_of(ids):
        with torch.no_grad():
            h = x0 = model.embed(ids)
            for block in model.encoder:
                h = block(h, x0)
            return model.patch_ends(ids, model.logits(h) if config.patching == "entropy" else None)

    ends = ends_of(x)
    for t in (0, 7, 8, 40, 63, 64, 94):
        y = x.clone()
        y[:, t + 1:] = (y[:, t + 1:] + 1) % config.vocab_size
        assert torch.equal(ends_of(y)[:, :t + 1], ends[:, :t + 1])
    slot = ends.long().cumsum(1)  # byte t reads slot (patches ended by t): [null, patch 0, patch 1, ...]
    last_byte = [torch.nonzero(row).flatten() for row in ends]  # where patch k ends
    for b in range(ends.size(0)):
        for t in range(ends.size(1)):
            if slot[b, t] > 0:
                assert last_byte[b][slot[b, t] - 1] <= t
    if preset == "entropy":
        assert ends.sum() > (ends.size(1) // config.patch_size) * ends.size(0)  # entropy adds ends to the grid


def test_register_refuses_an_unknown_data_form():
    from harness.model import GPT, GPTConfig
    from harness.registry import register

    with pytest.raises(UserError, match="data='text'"):
        register("not_registered", GPTConfig, GPT, data="text")


def test_the_record_names_both_byte_totals(builtin, tmp_path):
    """What a byte-form run records (harness.train): the source, and the bytes it scores beside those a token
    model on the source scores at the same seq_len (the same split, cut into sequences of bytes or of tokens).
    The smoke suite runs the bytes family end to end on the byte form of the builtin corpus."""
    from harness.metric import load_validation

    form = byte_data.byte_form(builtin, tmp_path, log=lambda *_: None)
    scored = load_validation(form.val_files, 256, 0, form.tokenizer.tables).target_bytes
    record = byte_data.coverage(form, 256, 0, scored)
    assert record["source"] == "builtin" and record["source_hash"] == builtin.content_hash != form.content_hash
    assert form.meta["val_bytes"] - 256 < scored <= form.meta["val_bytes"] == record["val_bytes_in_split"]
    assert form.meta["val_bytes"] - 256 * 8 < record["source_val_bytes_scored"] <= form.meta["val_bytes"]
