"""The tokenizer's size as an axis: the builtin corpus at N pieces (`builtin_sp<N>`) holds the same documents in
the same split at every N, so every size scores the same validation text over the same bytes, and val_bpb
compares across sizes. Built here at small sizes into a temporary data root; sizes the corpus cannot give, and
FineWeb sizes not fetched, are refused in one line."""

import json
import re
import shutil

import numpy as np
import pytest
import sentencepiece as spm

from conftest import harness_main
from harness.data import builtin
from harness.data.datasets import resolve_dataset, validation_counts
from harness.data.fineweb import repo_for, text_hash_from_manifest
from harness.data.names import builtin_name, builtin_vocab
from harness.data.shards import read_shard
from harness.errors import UserError

SIZES = (384, 512)  # 256 is below what byte fallback allows (test_sizes_the_corpus_cannot_give_are_refused)


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A data root with builtin_sp384 (built through the CLI) and builtin_sp512."""
    data_root = tmp_path_factory.mktemp("data")
    result = harness_main("data", "builtin", "--vocab", "384", "--data-root", str(data_root))
    assert result.returncode == 0, result.stderr
    assert "builtin_sp384: " in result.stdout and "vocab 384" in result.stdout and "tokens per byte" in result.stdout
    resolve_dataset("builtin_sp512", data_root, log=quiet)
    return data_root


def documents(ds) -> list[str]:
    """The validation documents as the tokenizer gives them back (each starts at a BOS)."""
    sp = spm.SentencePieceProcessor(model_file=ds.tokenizer.path)
    ids = np.asarray(read_shard(ds.val_files[0])).astype(np.int64)
    starts = np.flatnonzero(ids == sp.bos_id())
    return [sp.decode(doc[1:].tolist()) for doc in np.split(ids, starts[1:])]


def test_every_size_scores_the_same_validation_text_over_the_same_bytes(root):
    sets = [resolve_dataset(f"builtin_sp{n}", root, log=quiet) for n in SIZES]
    sets.append(resolve_dataset("builtin", log=quiet))  # sp1024, in the default data root: the same Python's docs
    counts = [validation_counts(ds) for ds in sets]
    assert len({ds.text_hash for ds in sets}) == 1 and sets[0].text_hash
    assert len({val_bytes for _, val_bytes in counts}) == 1  # the target bytes the metric divides by
    assert documents(sets[0]) == documents(sets[1]) == documents(sets[2])
    tokens = [n for n, _ in counts]
    assert tokens[0] > tokens[1] > tokens[2]  # more pieces, fewer tokens for the same bytes
    for ds, n in zip(sets, (*SIZES, 1024)):
        assert ds.tokenizer.vocab_size == ds.meta["vocab_size"] == n
        assert ds.meta["tokenizer_settings"] == builtin.sp_settings(n)
        for files in (ds.val_files, ds.train_files):
            assert int(np.asarray(read_shard(files[0])).max()) < n
    byte_forms = [resolve_dataset(f"builtin_sp{n}_bytes", root, log=quiet) for n in SIZES]
    assert byte_forms[0].text_hash == sets[0].text_hash and byte_forms[0].meta["val_bytes"] == counts[0][1]
    # the bytes each size's tokens stand for, written out as bytes: one stream, byte for byte
    assert np.array_equal(*(np.asarray(read_shard(ds.val_files[0])) for ds in byte_forms))


def test_builtin_sp1024_is_builtin():
    plain, named = resolve_dataset("builtin", log=quiet), resolve_dataset("builtin_sp1024", log=quiet)
    assert (named.name, named.directory, named.content_hash) == ("builtin", plain.directory, plain.content_hash)
    assert builtin.sp_settings(1024) == builtin.SP_SETTINGS  # the key, and so the folder, it always had


def test_every_size_is_built_by_the_same_code():
    """4096 (and any N) goes through the path the small sizes test: only the name and vocab_size differ."""
    assert builtin_vocab("builtin_sp4096") == 4096 and builtin_name(4096) == "builtin_sp4096"
    assert builtin.sp_settings(4096) == {**builtin.SP_SETTINGS, "vocab_size": 4096}
    assert builtin_vocab("builtin") == 1024 and builtin_vocab("synthetic") is None


def test_a_corpus_built_before_sizes_gains_its_vocabulary_and_text_hash(root):
    ds = resolve_dataset("builtin_sp512", root, log=quiet)
    meta_path = ds.directory / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k not in ("vocab_size", "text_hash")}))
    again = resolve_dataset("builtin_sp512", root, log=quiet)
    assert (again.text_hash, again.meta["vocab_size"], again.content_hash) == (ds.text_hash, 512, ds.content_hash)


@pytest.mark.parametrize("name", ["builtin_sp0", "builtin_spx", "builtin_sp-512", "builtin_sp0512", "builtin_sp"])
def test_malformed_sizes_are_refused_before_anything_is_built(name, tmp_path):
    with pytest.raises(UserError, match="positive whole number") as exc:
        resolve_dataset(name, tmp_path, log=quiet)
    assert "\n" not in str(exc.value) and not (tmp_path / "datasets").exists()


def test_sizes_the_corpus_cannot_give_are_refused_in_one_line(root):
    before = sorted((root / "datasets").iterdir())
    with pytest.raises(UserError) as small:
        resolve_dataset("builtin_sp256", root, log=quiet)
    smallest = int(re.search(r"use builtin_sp(\d+) or more", str(small.value))[1])
    assert 260 < smallest <= SIZES[0] and "\n" not in str(small.value)
    with pytest.raises(UserError) as large:
        resolve_dataset("builtin_sp70000", root, log=quiet)
    largest = int(re.search(r"the largest builtin vocabulary is builtin_sp(\d+)$", str(large.value))[1])
    assert 8192 < largest <= 65536 and "\n" not in str(large.value)
    assert sorted((root / "datasets").iterdir()) == before  # nothing left of the refusals, not even a temporary


def test_fineweb_at_other_vocabularies_fails_offline_naming_how_to_fetch(tmp_path):
    for variant in ("sp4096", "sp8192"):
        with pytest.raises(UserError, match=f"fetch it with: python -m harness data fineweb .* --variant {variant}$"):
            resolve_dataset(f"fineweb_{variant}", tmp_path, log=quiet)
        assert repo_for(variant) == "kevclark/parameter-golf"  # where the records published them
    offline = harness_main("data", "fineweb_sp4096", "--data-root", str(tmp_path),
                           env={"HF_ENDPOINT": "http://127.0.0.1:9"})  # a closed port: refused at once
    assert offline.returncode == 2 and offline.stderr.startswith("error: cannot reach 127.0.0.1")
    assert len(offline.stderr.strip().splitlines()) == 1 and not any(tmp_path.iterdir())


def test_fineweb_text_hash_comes_from_the_manifest(root, tmp_path):
    """Folders laid out as the challenge's script leaves them (shards and tokenizer, no meta.json): two
    vocabularies of one document list share a text_hash; a manifest without the list's sha256 gives None."""
    manifest = {"num_val_docs": 31, "docs_meta": {"docs_sha256": "ab" * 32}, "datasets": []}
    for n in SIZES:
        src = resolve_dataset(f"builtin_sp{n}", root, log=quiet)
        folder = tmp_path / "datasets" / f"fineweb10B_sp{n}"
        folder.mkdir(parents=True)
        for path in (*src.val_files, *src.train_files, src.tokenizer.path):
            shutil.copy(path, folder)
        manifest["datasets"].append({"name": folder.name, "vocab_size": n})
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    hashes = {resolve_dataset(f"fineweb_sp{n}", tmp_path, log=quiet).text_hash for n in SIZES}
    assert hashes == {text_hash_from_manifest(manifest, f"fineweb10B_sp{SIZES[0]}")} and None not in hashes
    assert text_hash_from_manifest({**manifest, "docs_meta": {"docs_sha256": None}}, "fineweb10B_sp512") is None
    assert text_hash_from_manifest(manifest, "fineweb10B_sp8192") is None  # not listed
