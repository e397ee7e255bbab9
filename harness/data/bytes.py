"""The byte form of a token dataset: its shards decoded with its own tokenizer into byte260 shards, cached, so a
byte-level model reads the text its source's token models read and is scored over the same bytes.

Every token is written as the bytes the challenge's accounting (tokenizers.ByteTables) counts for it: its piece
in UTF-8 without the leading "▁", preceded by a space byte where the piece had one unless the token before is a
boundary, as ids byte + 4. So the byte count of a split equals the challenge's byte count of its tokens, by
construction and checked on every build. Per document this is what SentencePiece's decode gives, except at two
edges, where the count wins: a byte-fallback piece is written as its raw byte (decode turns bytes that do not
form valid UTF-8 into U+FFFD, three bytes for one counted), and the leading space of a piece after a boundary
inside the stream is dropped (decode keeps it when it skips a control token; the challenge counts none, and at
a document's start decode drops it too). Boundary tokens (control, unknown, unused: the BOS before each
document) become byte260's BOS, the unknown piece its UNK, 0 bytes each. A split's first token is never a
target, so its bytes are not scored; it becomes a BOS. Shard i of a split comes from the source's shard i
(val from val, train from train), the token before a shard being the last of the previous one.

The result lives under the data root (datasets/<source folder>_byte260/), built once into a temporary folder
and renamed into place, so an interrupted build leaves nothing; its meta.json records the source's content
hash and tokenizer sha256, and a source whose hash changed is derived again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from harness.checks import read_json
from harness.data.shards import read_shard, write_shard
from harness.data.tokenizers import BYTE_OFFSET, Tokenizer, byte_tokenizer
from harness.errors import UserError

FORMAT_VERSION = 1
BOS, UNK, SPACE = 1, 3, ord(" ") + BYTE_OFFSET
CHUNK_TOKENS = 1 << 22  # tokens expanded at a time: bounds the index arrays to a few hundred MB


@dataclasses.dataclass(frozen=True)
class PieceBytes:
    """Per token id: the byte260 ids it is written as (without its leading space) and whether it has one."""
    flat: np.ndarray      # every id's byte260 ids, concatenated
    starts: np.ndarray    # int64: where id i's run begins in flat
    lengths: np.ndarray   # int64
    space: np.ndarray     # bool: a leading "▁", written as a space unless the previous token is a boundary
    boundary: np.ndarray  # bool


def piece_bytes(tokenizer: Tokenizer) -> PieceBytes:
    sp, tables = tokenizer.processor, tokenizer.tables
    runs = []
    for i in range(tokenizer.vocab_size):
        if tables.is_boundary[i]:
            runs.append([UNK if sp.is_unknown(i) else BOS])
        elif sp.is_byte(i):  # "<0xAB>"
            runs.append([int(sp.id_to_piece(i)[3:-1], 16) + BYTE_OFFSET])
        else:
            piece = sp.id_to_piece(i)
            text = piece[1:] if tables.has_leading_space[i] else piece
            runs.append([b + BYTE_OFFSET for b in text.encode("utf-8")])
    lengths = np.array([len(r) for r in runs], dtype=np.int64)
    counted = np.where(tables.is_boundary, 0, lengths)  # a boundary's BOS stands for no byte
    if not np.array_equal(counted, tables.base_bytes.astype(np.int64)):
        raise RuntimeError(f"{tokenizer.name}: pieces written differ from the byte table's counts")
    return PieceBytes(np.concatenate([np.asarray(r, dtype=np.uint16) for r in runs]),
                      np.cumsum(lengths) - lengths, lengths, tables.has_leading_space.copy(), tables.is_boundary)


def to_bytes(tokens: np.ndarray, prev: int, pieces: PieceBytes) -> np.ndarray:
    """Token ids → byte260 ids (uint16), `prev` being the token right before them."""
    t = np.asarray(tokens, dtype=np.int64)
    if t.size == 0:
        return np.zeros(0, dtype=np.uint16)
    before = np.concatenate(([prev], t[:-1]))
    lead = (pieces.space[t] & ~pieces.boundary[before]).astype(np.int64)
    n = pieces.lengths[t] + lead
    begins = np.cumsum(n) - n
    owner = np.repeat(np.arange(t.size), n)
    k = np.arange(int(n.sum())) - begins[owner] - lead[owner]  # -1: the leading space
    body = pieces.flat[pieces.starts[t[owner]] + np.maximum(k, 0)]
    return np.where(k < 0, SPACE, body).astype(np.uint16)


def _derive_split(files: tuple[Path, ...], out_dir: Path, pieces: PieceBytes, tokenizer: Tokenizer) -> dict:
    """Write the byte form of one split's shards; the split's bytes, checked against the challenge's count."""
    written = counted = tokens_in = 0
    prev = None
    for path in files:
        tokens = np.asarray(read_shard(path))
        parts = []
        for start in range(0, tokens.size, CHUNK_TOKENS):
            chunk = tokens[start:start + CHUNK_TOKENS].astype(np.int64)
            if prev is None:  # the split's first token is no target: a BOS in its place
                parts.append(np.array([BOS], dtype=np.uint16))
                prev, chunk = int(chunk[0]), chunk[1:]
            if chunk.size:
                parts.append(to_bytes(chunk, prev, pieces))
                counted += tokenizer.tables.count_bytes(np.concatenate(([prev], chunk[:-1])), chunk)
                prev = int(chunk[-1])
        out = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)
        write_shard(out_dir / path.name, out)
        written += int((out >= BYTE_OFFSET).sum())
        tokens_in += tokens.size
    if written != counted:
        raise RuntimeError(f"byte form of {files[0].parent}: wrote {written} bytes, the tokens count {counted}")
    return {"bytes": written, "source_tokens": tokens_in}


def cache_dir(source, data_root: Path) -> Path:
    """datasets/<source folder>_byte260 for a source in the data root's datasets/; a source elsewhere
    (--data-dir) gets its path's hash in the name, so two folders of one name keep apart."""
    datasets = Path(data_root) / "datasets"
    src = Path(source.directory).resolve()
    if src.parent == datasets.resolve():
        return datasets / f"{src.name}_byte260"
    return datasets / f"{src.name}_{hashlib.sha256(str(src).encode()).hexdigest()[:8]}_byte260"


def _build(source, out: Path, log) -> None:
    t0 = time.perf_counter()
    log(f"byte form of {source.name}: decoding its shards with {source.tokenizer.name} into {out} (once)...")
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        pieces = piece_bytes(source.tokenizer)
        val = _derive_split(source.val_files, tmp, pieces, source.tokenizer)
        train = _derive_split(source.train_files, tmp, pieces, source.tokenizer)
    except BaseException:  # interrupted or failed: nothing of it stays (a killed process leaves only tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    meta = {"name": f"{source.name}_bytes", "tokenizer": "byte260", "tokenizer_sha256": byte_tokenizer().content_hash,
            "content_hash": hashlib.sha256(f"byte260|{FORMAT_VERSION}|{source.content_hash}".encode()).hexdigest(),
            "format": FORMAT_VERSION, "source": source.name, "source_directory": str(source.directory),
            "source_content_hash": source.content_hash, "source_tokenizer": source.tokenizer.name,
            "source_tokenizer_sha256": source.tokenizer.content_hash,
            "val_bytes": val["bytes"], "val_source_tokens": val["source_tokens"],
            "train_bytes": train["bytes"], "train_source_tokens": train["source_tokens"]}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    old = out.with_name(f".{out.name}.old{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:  # another process put a build there first
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    log(f"byte form of {source.name}: {val['bytes']:,} val / {train['bytes']:,} train bytes in "
        f"{time.perf_counter() - t0:.1f}s")


def byte_form(source, data_root: Path, log=print):
    """The byte260 Dataset derived from `source` (built or rebuilt as needed), with `source` attached and its
    text_hash; a dataset already in byte260 is its own byte form."""
    from harness.data.datasets import from_directory

    if source.tokenizer.processor is None:
        if source.tokenizer.name == byte_tokenizer().name:
            return source
        raise UserError(f"dataset {source.name!r} has no SentencePiece tokenizer to decode its shards into bytes")
    out = cache_dir(source, data_root)
    meta_path = out / "meta.json"
    meta = read_json(meta_path, f"byte form of {source.name}", f"delete {out} and it is derived again"
                     ) if meta_path.is_file() else {}
    if (meta.get("format"), meta.get("source_content_hash"), meta.get("source_tokenizer_sha256")) != (
            FORMAT_VERSION, source.content_hash, source.tokenizer.content_hash):
        _build(source, out, log)
    dataset = from_directory(out, f"{source.name}_bytes", data_root=data_root)
    return dataclasses.replace(dataset, source=source, text_hash=source.text_hash)  # the same text, in bytes


def coverage(dataset, seq_len: int, cap_tokens: int, scored_bytes: int) -> dict:
    """For the record: which bytes a byte-form run scores beside those a token run on the source scores. Both
    cover the same split; cut into seq_len sequences (of bytes here, of tokens there), each leaves a different
    tail unscored."""
    from harness.metric import load_validation

    src = dataset.source
    tokens = load_validation(src.val_files, seq_len, cap_tokens, src.tokenizer.tables)
    return {"source": src.name, "source_hash": src.content_hash, "source_tokenizer": src.tokenizer.name,
            "val_bytes_in_split": dataset.meta["val_bytes"], "val_bytes_scored": scored_bytes,
            "source_val_bytes_scored": tokens.target_bytes,
            "comparison": "val_bpb over the bytes of the source's validation split, as the source's token "
                          "models are scored: compare by val_bpb"}
