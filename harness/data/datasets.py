"""Resolve a budget's dataset name (or an explicit directory) to shard files, a tokenizer and a content hash.

Two hashes say what a dataset is: `content_hash` its tokens (another tokenizer of the same text differs), and
`text_hash` its validation text where that is known (equal across tokenizers of one corpus: the builtin corpus
at every size, FineWeb exports of the same documents), so a report can tell another tokenizer from other data.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness import REPO_ROOT
from harness.checks import read_json
from harness.data.fineweb import dataset_dirname, fetch_command, text_hash_on_record
from harness.data.names import DATASET_NAMES, builtin_name, builtin_vocab
from harness.data.shards import read_shard, shard_token_count
from harness.data.tokenizers import Tokenizer, byte_tokenizer, sentencepiece_tokenizer
from harness.errors import UserError


def default_data_root() -> Path:
    return Path(os.environ.get("HARNESS_DATA_ROOT", REPO_ROOT / "data"))


@dataclass(frozen=True)
class Dataset:
    name: str
    directory: Path
    train_files: tuple[Path, ...]
    val_files: tuple[Path, ...]
    tokenizer: Tokenizer
    content_hash: str
    meta: dict = field(default_factory=dict)
    tokenizer_check: str = ""  # how the tokenizer was found to be the one the shards were made with
    source: Dataset | None = field(default=None, repr=False)  # the token dataset this one is the byte form of
    text_hash: str | None = None  # the validation text's identity, the same for every tokenizer of it; None: unknown


def _hash_shards(train: tuple[Path, ...], val: tuple[Path, ...]) -> str:
    """Validation shards are hashed whole; training shards by name, size and their first and last MiB."""
    h = hashlib.sha256()
    for p in val:
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    for p in train:
        size = p.stat().st_size
        h.update(f"{p.name}|{size}".encode())
        with open(p, "rb") as f:
            h.update(f.read(1 << 20))
            f.seek(max(size - (1 << 20), 0))
            h.update(f.read(1 << 20))
    return h.hexdigest()


def _find_tokenizer(directory: Path, data_root: Path, meta: dict) -> Path | None:
    candidates = sorted(directory.glob("*.model"))
    if candidates:
        return candidates[0]
    if isinstance(recorded := meta.get("tokenizer_path"), str) and (data_root / recorded).is_file():
        return data_root / recorded  # the manifest's name for it (fetch_fineweb records it)
    if directory.name.startswith("fineweb10B_sp"):
        vocab = directory.name.removeprefix("fineweb10B_sp")
        path = data_root / "tokenizers" / f"fineweb_{vocab}_bpe.model"
        return path if path.is_file() else None
    return None


def from_directory(directory: Path, name: str, tokenizer_path: Path | None = None,
                   data_root: Path | None = None, missing_hint: str = "") -> Dataset:
    directory = Path(directory)
    data_root = data_root or default_data_root()
    hint = f"; {missing_hint}" if missing_hint else ""
    if not directory.is_dir():
        raise UserError(f"dataset {name!r} not found: {directory} does not exist{hint}")
    train = tuple(sorted(directory.glob("*_train_*.bin")))
    val = tuple(sorted(directory.glob("*_val_*.bin")))
    if not train or not val:
        raise UserError(f"dataset {name!r} in {directory} needs *_train_*.bin and *_val_*.bin shards "
                        f"(found {len(train)} train, {len(val)} val){hint}")
    for p in (*val, *train):
        shard_token_count(p)  # validates header and size now, with the file named, not mid-run
    meta_path = directory / "meta.json"
    meta = read_json(meta_path, f"dataset {name!r} metadata", "fix or delete it (it records the dataset's "
                     "tokenizer and hash)") if meta_path.exists() else {}
    if meta.get("tokenizer") == "byte260" or directory.name.endswith("byte260"):
        tokenizer = byte_tokenizer()
    else:
        tok = Path(tokenizer_path) if tokenizer_path else _find_tokenizer(directory, data_root, meta)
        if tok is None:
            raise UserError(f"dataset {name!r} in {directory} has no tokenizer: put a SentencePiece .model in it "
                            f"or pass --tokenizer PATH{hint}")
        tokenizer = sentencepiece_tokenizer(tok)
    content_hash = meta.get("content_hash") or _hash_shards(train, val)
    check = check_tokenizer(name, directory, meta, tokenizer, val[0])
    text_hash = meta.get("text_hash") or (text_hash_on_record(data_root, directory.name)
                                          if directory.name.startswith("fineweb10B_") else None)
    return Dataset(name=name, directory=directory, train_files=train, val_files=val, tokenizer=tokenizer,
                   content_hash=content_hash, meta=meta, tokenizer_check=check, text_hash=text_hash)


def check_shard_lengths(dataset: Dataset, seq_len: int) -> None:
    """Every shard must hold at least one sequence and its next-token target (seq_len + 1 tokens): an empty
    training shard would stall the loader, and a split of short shards has nothing to score."""
    for split, files in (("training", dataset.train_files), ("validation", dataset.val_files)):
        for path in files:
            count = shard_token_count(path)
            if count < seq_len + 1:
                raise UserError(f"{split} shard {path} holds {count:,} tokens, too few for one sequence of the "
                                f"budget's seq_len {seq_len} (needs {seq_len + 1:,}); remove it or rebuild it")


def validation_counts(dataset: Dataset) -> tuple[int, int]:
    """(tokens, bytes) of the whole validation split, the bytes by the challenge's accounting with every token
    after the split's first a target, as the metric scores them: equal across tokenizers of one text."""
    tokens = np.concatenate([np.asarray(read_shard(p)) for p in dataset.val_files])
    return int(tokens.size), dataset.tokenizer.tables.count_bytes(tokens[:-1], tokens[1:])


ROUND_TRIP_SAMPLE_TOKENS = 8192
ROUND_TRIP_MIN_AGREEMENT = 0.99  # the tokenizer that made the ids gives 100.0%; others ~89% (tests)


def check_tokenizer(name: str, directory: Path, meta: dict, tokenizer, val_file: Path) -> str:
    """The tokenizer must be the one the shards were made with: val_bpb divides by the bytes each token stands
    for, so another tokenizer of the same size scores the same tokens against the wrong byte counts. A dataset
    that recorded its tokenizer's hash (meta.json, `tokenizer_sha256`) is checked against it; one that did not is
    checked by decoding a sample of its validation tokens and encoding them again."""
    recorded = meta.get("tokenizer_sha256")
    fix = f"pass the tokenizer its shards were made with (--tokenizer), or none to use the one in {directory}"
    if recorded:
        if recorded != tokenizer.content_hash:
            raise UserError(f"dataset {name!r} was tokenized with a tokenizer of sha256 {recorded[:12]}…, but "
                            f"{tokenizer.path or tokenizer.name} has {tokenizer.content_hash[:12]}…; {fix}")
        return "sha256 recorded with the dataset"
    if tokenizer.processor is None:
        return "byte tokenizer (fixed)"
    from harness.data.tokenizers import round_trip_agreement

    sample = np.asarray(read_shard(val_file)[:ROUND_TRIP_SAMPLE_TOKENS])
    agreement = round_trip_agreement(tokenizer, sample)
    if agreement < ROUND_TRIP_MIN_AGREEMENT:
        raise UserError(f"tokenizer {tokenizer.path} does not fit dataset {name!r}: decoding its first "
                        f"{sample.size:,} validation tokens and encoding them again gives back only "
                        f"{agreement:.0%} of them (the tokenizer that made them gives ~100%); {fix}")
    return f"round trip of {sample.size:,} validation tokens: {agreement:.1%} identical"


def resolve_dataset(name: str, data_root: Path | None = None, data_dir: Path | None = None,
                    tokenizer_path: Path | None = None, log=print, form: str = "tokens") -> Dataset:
    """A dataset by name: `builtin` / `builtin_sp<N>`, `synthetic`, `fineweb` / `fineweb_<variant>`, or an
    explicit directory. `<name>_bytes`, or form="bytes" (a byte-level variant's), is its byte form
    (harness/data/bytes.py)."""
    data_root = Path(data_root or default_data_root())
    if form == "bytes" or (data_dir is None and name.endswith("_bytes")):
        from harness.data.bytes import byte_form

        source = name.removesuffix("_bytes")
        if data_dir is None and source not in ("synthetic", "fineweb") and not source.startswith("fineweb_") and (
                builtin_vocab(source) is None):
            raise UserError(f"unknown dataset {name!r}: {source!r} is no token dataset to take the byte form of; use "
                            f"builtin_bytes, builtin_sp<N>_bytes, fineweb_bytes or fineweb_<sp N>_bytes")
        return byte_form(resolve_dataset(source, data_root, data_dir, tokenizer_path, log), data_root, log)
    if data_dir is not None:
        return from_directory(Path(data_dir), Path(data_dir).name, tokenizer_path, data_root)
    if (vocab_size := builtin_vocab(name)) is not None:  # builtin_sp1024 is `builtin`, by name too
        from harness.data.builtin import build_builtin

        return from_directory(build_builtin(data_root, vocab_size, log=log), builtin_name(vocab_size),
                              tokenizer_path, data_root)
    if name == "synthetic":
        from harness.data.synthetic import build_synthetic

        return from_directory(build_synthetic(data_root, log=log), "synthetic", tokenizer_path, data_root)
    if name == "fineweb" or name.startswith("fineweb_"):
        variant = name.partition("_")[2] or "sp1024"
        directory = data_root / "datasets" / dataset_dirname(variant)
        return from_directory(directory, name, tokenizer_path, data_root,
                              missing_hint=f"fetch it with: {fetch_command(variant=variant)}")
    raise UserError(f"unknown dataset {name!r}; use {DATASET_NAMES}, or --data-dir PATH")
