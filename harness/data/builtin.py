"""The embedded default corpus `builtin`: English text from the running Python's own documentation, at any
SentencePiece vocabulary size (`builtin_sp<N>`; `builtin` is sp1024, the challenge baseline's).

Documents are the `pydoc_data` topics and, per standard-library source file, its module, class and function
docstrings (read with `ast`, so nothing is imported or executed). They are put in a fixed order (by a hash of
their title) and the first ones form the validation split, whatever the vocabulary: every size holds the same
documents in the same split, so the validation text, and the bytes val_bpb divides by, are the same for all of
them and their scores compare. A SentencePiece BPE tokenizer with the challenge's settings at N pieces is
trained on the training split, every document is written as BOS + its tokens, and the result is cached under
data/ keyed by a hash of the text and the settings: built once per size, with a progress line, into a
temporary folder renamed into place (so concurrent builders each finish or find the other's build).

The meta.json of each size records its vocabulary (what SentencePiece reached) and `text_hash`, the hash of
the validation documents' text: equal across sizes, so a report can tell another tokenizer of the same text
from other data.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import re
import shutil
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import numpy as np

from harness.checks import read_json
from harness.data.names import DEFAULT_VOCAB, builtin_name
from harness.data.shards import write_shard
from harness.errors import UserError

# The challenge's trainer settings (data/download_hf_docs_and_tokenize.py in parameter-golf), here at sp1024;
# other sizes change vocab_size alone (sp_settings).
SP_SETTINGS = {
    "model_type": "bpe", "vocab_size": DEFAULT_VOCAB, "character_coverage": 0.999, "byte_fallback": True,
    "split_digits": True, "normalization_rule_name": "nmt_nfkc", "add_dummy_prefix": False,
    "pad_id": 0, "bos_id": 1, "eos_id": 2, "unk_id": 3, "hard_vocab_limit": False,
}
META_PIECES = 4 + 256  # pad/bos/eos/unk and the byte-fallback pieces: below this SentencePiece cannot start
MAX_SHARD_VOCAB = 1 << 16  # shards store ids as uint16
VAL_FRACTION_OF_CHARS = 0.05
FORMAT_VERSION = 2
SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


def sp_settings(vocab_size: int) -> dict:
    return {**SP_SETTINGS, "vocab_size": vocab_size}


def _stdlib_sources() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        found += [Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py")]
    return found


def _fingerprint(sources: list[Path]) -> str:
    """Cheap identity of the documentation on this Python (paths, sizes, mtimes): avoids re-reading the text."""
    import pydoc_data.topics as topics

    h = hashlib.sha256(f"{FORMAT_VERSION}|{sys.version}|{topics.__file__}".encode())
    for path in [Path(topics.__file__), *sources]:
        st = path.stat()
        h.update(f"{path}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _docstrings(path: Path) -> str:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return ""
    nodes = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return "\n\n".join(d for node in ast.walk(tree) if isinstance(node, nodes) and (d := ast.get_docstring(node)))


def collect_documents(sources: list[Path] | None = None) -> list[tuple[str, str]]:
    """(title, text) for every document, in the corpus's fixed order."""
    import pydoc_data.topics as topics

    root = Path(sysconfig.get_paths()["stdlib"])
    docs = [(f"topic:{key}", text.strip()) for key, text in topics.topics.items() if text.strip()]
    for path in sources if sources is not None else _stdlib_sources():
        if text := _docstrings(path).strip():
            docs.append((f"module:{path.relative_to(root).as_posix()}", text))
    return sorted(docs, key=lambda d: hashlib.sha256(d[0].encode()).hexdigest())


@functools.lru_cache(maxsize=1)
def _documents(fingerprint: str, sources: tuple[Path, ...]) -> list[tuple[str, str]]:
    """collect_documents, read once per process and documentation (`fingerprint`): a process that builds several
    sizes, or refuses one, reads the standard library once."""
    return collect_documents(list(sources))


def split_documents(docs: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """The first documents, up to VAL_FRACTION_OF_CHARS of all text, are validation; the rest train."""
    total = sum(len(t) for _, t in docs)
    val, seen = [], 0
    for _, text in docs:
        if seen >= VAL_FRACTION_OF_CHARS * total:
            break
        val.append(text)
        seen += len(text)
    return val, [t for _, t in docs[len(val):]]


def all_text_hash(docs: list[tuple[str, str]]) -> str:
    return hashlib.sha256("\x00".join(t for _, t in docs).encode()).hexdigest()


def validation_text_hash(val_docs: list[str]) -> str:
    """sha256 of the validation documents' UTF-8 text, NUL-separated: what every size of the corpus scores."""
    return hashlib.sha256("\x00".join(val_docs).encode()).hexdigest()


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def complete_meta(directory: Path, fingerprint: str, sources: list[Path]) -> Path:
    """Add what a corpus built by an earlier version did not record: its tokenizer's hash (the tokenizer beside
    the shards is the one that made them: they are built together), its vocabulary size and its validation
    text's hash (read again from the documentation, and only if it is still the text the corpus was built from)."""
    meta_path = directory / "meta.json"
    meta = read_json(meta_path, "builtin corpus metadata", f"delete {directory} and it is rebuilt on next use")
    if all(k in meta for k in ("tokenizer_sha256", "vocab_size", "text_hash")):
        return directory
    model = next(iter(sorted(directory.glob("*.model"))))
    meta.setdefault("tokenizer_sha256", hashlib.sha256(model.read_bytes()).hexdigest())
    if "vocab_size" not in meta:
        import sentencepiece as spm

        meta["vocab_size"] = int(spm.SentencePieceProcessor(model_file=str(model)).vocab_size())
    if "text_hash" not in meta:
        docs = _documents(fingerprint, tuple(sources))
        if all_text_hash(docs) == meta.get("text_sha256"):
            meta["text_hash"] = validation_text_hash(split_documents(docs)[0])
    _write_json(meta_path, meta)
    return directory


def _index_key(fingerprint: str, vocab_size: int) -> str:
    """sp1024 keeps the bare fingerprint, its key from before other sizes existed: corpora built then are found."""
    return fingerprint if vocab_size == DEFAULT_VOCAB else f"{fingerprint}|sp{vocab_size}"


def _remember(index_path: Path, key: str, folder: str) -> None:
    """Record a built corpus in the index, re-read just before writing so builds of other sizes are kept."""
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):  # a damaged index is rebuilt: it only points at folders
        index = {}
    _write_json(index_path, {**(index if isinstance(index, dict) else {}), key: folder})


def _train_tokenizer(prefix: Path, train_docs: list[str], vocab_size: int) -> Any:
    """Train the BPE at `vocab_size` and return its SentencePieceProcessor, or refuse a size this corpus cannot
    give."""
    import sentencepiece as spm

    name = builtin_name(vocab_size)
    # Below META_PIECES SentencePiece fails on other checks first; at META_PIECES + 1 it reports the smallest
    # size that works. Above MAX_SHARD_VOCAB the shards could not hold the ids.
    trained = min(max(vocab_size, META_PIECES + 1), MAX_SHARD_VOCAB)
    lines = (line for text in train_docs for line in text.splitlines() if line.strip())
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=lines, model_prefix=str(prefix), minloglevel=2,
                                       num_threads=os.cpu_count() or 1, **sp_settings(trained))
    except RuntimeError as exc:  # the one place SentencePiece says how many pieces this text needs at least
        smallest = re.search(r"smaller than required_chars\. \d+ vs (\d+)", str(exc))
        if smallest is None:
            raise
        raise UserError(f"{name}: SentencePiece needs at least {smallest[1]} pieces on this corpus with the "
                        f"challenge's settings (256 byte pieces, 4 special ids, the characters of 99.9% of the "
                        f"text); use builtin_sp{smallest[1]} or more, or builtin_bytes for 260 byte ids") from None
    sp = spm.SentencePieceProcessor(model_file=f"{prefix}.model")
    reached = int(sp.vocab_size())
    if reached < vocab_size:  # hard_vocab_limit=False: the trainer stops when no pair of pieces is left to merge
        limit = "no pair of pieces left to merge" if reached < MAX_SHARD_VOCAB else "shards hold uint16 ids"
        raise UserError(f"{name}: SentencePiece reaches only {reached:,} pieces on this corpus ({limit}); the "
                        f"largest builtin vocabulary is builtin_sp{reached}")
    return sp


def _build(out: Path, vocab_size: int, docs: list[tuple[str, str]], key: str) -> None:
    """Tokenizer, shards and meta.json into a temporary folder, renamed to `out` when complete."""
    import sentencepiece as spm

    val_docs, train_docs = split_documents(docs)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        prefix = tmp / f"builtin_{vocab_size}_bpe"
        sp = _train_tokenizer(prefix, train_docs, vocab_size)
        counts = {}
        for split, texts in (("val", val_docs), ("train", train_docs)):
            encoded = sp.encode(texts, out_type=int)
            tokens = np.concatenate([np.asarray([sp.bos_id(), *ids], dtype=np.int64) for ids in encoded])
            write_shard(tmp / f"builtin_{split}_000000.bin", tokens)
            counts[f"{split}_documents"], counts[f"{split}_tokens"] = len(texts), int(tokens.size)
        meta = {"name": builtin_name(vocab_size), "content_hash": key, "text_sha256": all_text_hash(docs),
                "text_hash": validation_text_hash(val_docs), "vocab_size": int(sp.vocab_size()),
                "python": sys.version,
                "tokenizer_sha256": hashlib.sha256(prefix.with_suffix(".model").read_bytes()).hexdigest(),
                "sentencepiece": spm.__version__, "tokenizer_settings": sp_settings(vocab_size),
                "text_bytes": sum(len(t.encode()) for _, t in docs), **counts}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    except BaseException:  # refused, failed or interrupted: nothing of it stays
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.replace(tmp, out)
    except OSError:  # another process finished the same build first
        shutil.rmtree(tmp, ignore_errors=True)


def build_builtin(data_root: Path, vocab_size: int = DEFAULT_VOCAB, log=print) -> Path:
    """Return the cached dataset directory of this Python's documentation at `vocab_size` pieces, building it
    on first use."""
    datasets = data_root / "datasets"
    datasets.mkdir(parents=True, exist_ok=True)
    sources = _stdlib_sources()
    index_path = datasets / "builtin-index.json"
    fingerprint = _fingerprint(sources)
    index_key = _index_key(fingerprint, vocab_size)
    try:  # a cache of built corpora: a damaged one is rebuilt from the folders it points at
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    cached = index.get(index_key) if isinstance(index, dict) else None
    if cached and (datasets / cached / "meta.json").is_file():
        return complete_meta(datasets / cached, fingerprint, sources)

    t0 = time.perf_counter()
    name = builtin_name(vocab_size)
    log(f"builtin corpus: first use of {name} on this Python, building it (reads the standard library's docs, "
        f"trains a {vocab_size}-piece tokenizer; once only)...")
    docs = _documents(fingerprint, tuple(sources))
    import sentencepiece as spm

    # sp_settings(1024) is SP_SETTINGS, so `builtin` keeps the key, folder and content hash it always had.
    key = hashlib.sha256(json.dumps({"text": all_text_hash(docs), "sp": sp_settings(vocab_size),
                                     "val": VAL_FRACTION_OF_CHARS, "format": FORMAT_VERSION,
                                     "spm": spm.__version__}, sort_keys=True).encode()).hexdigest()
    out = datasets / f"builtin_{key[:12]}"
    if not (out / "meta.json").is_file():
        log(f"builtin corpus: {len(docs):,} documents read in {time.perf_counter() - t0:.1f}s; training the "
            f"tokenizer and writing the shards ...")
        _build(out, vocab_size, docs, key)
    complete_meta(out, fingerprint, sources)
    _remember(index_path, index_key, out.name)
    log(f"builtin corpus: built {name} in {out} in {time.perf_counter() - t0:.1f}s")
    return out
