"""The embedded default corpus `builtin`: English text from the running Python's own documentation.

Documents are the `pydoc_data` topics and, per standard-library source file, its module, class and function
docstrings (read with `ast`, so nothing is imported or executed). They are put in a fixed order (by a hash of
their title) and the first ones form the validation split. A SentencePiece BPE tokenizer with the challenge's
sp1024 settings is trained on the training split, every document is written as BOS + its tokens, and the
result is cached under data/ keyed by a hash of the text and the settings: built once, with a progress line.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

from harness.checks import read_json
from harness.data.shards import write_shard

# The challenge's sp1024 trainer settings (data/download_hf_docs_and_tokenize.py in parameter-golf).
SP_SETTINGS = {
    "model_type": "bpe", "vocab_size": 1024, "character_coverage": 0.999, "byte_fallback": True,
    "split_digits": True, "normalization_rule_name": "nmt_nfkc", "add_dummy_prefix": False,
    "pad_id": 0, "bos_id": 1, "eos_id": 2, "unk_id": 3, "hard_vocab_limit": False,
}
VAL_FRACTION_OF_CHARS = 0.05
FORMAT_VERSION = 2
SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


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


def record_tokenizer_hash(directory: Path) -> Path:
    """Add the tokenizer's hash to a corpus built before datasets recorded it (the tokenizer beside the shards is
    the one that made them: they are built together)."""
    meta_path = directory / "meta.json"
    meta = read_json(meta_path, "builtin corpus metadata", f"delete {directory} and it is rebuilt on next use")
    if "tokenizer_sha256" not in meta:
        meta["tokenizer_sha256"] = hashlib.sha256((directory / "builtin_1024_bpe.model").read_bytes()).hexdigest()
        tmp = meta_path.with_name(f".meta.json.tmp{os.getpid()}")
        tmp.write_text(json.dumps(meta, indent=2))
        os.replace(tmp, meta_path)
    return directory


def build_builtin(data_root: Path, log=print) -> Path:
    """Return the cached dataset directory for this Python's documentation, building it on first use."""
    datasets = data_root / "datasets"
    datasets.mkdir(parents=True, exist_ok=True)
    sources = _stdlib_sources()
    index_path = datasets / "builtin-index.json"
    fingerprint = _fingerprint(sources)
    try:  # a cache of built corpora: a damaged one is rebuilt from the folders it points at
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    if not isinstance(index, dict):
        index = {}
    cached = index.get(fingerprint)
    if cached and (datasets / cached / "meta.json").is_file():
        return record_tokenizer_hash(datasets / cached)

    t0 = time.perf_counter()
    log("builtin corpus: first use on this Python, building it (reads the standard library's docs, "
        "trains a 1024-piece tokenizer; once only)...")
    docs = collect_documents(sources)
    val_docs, train_docs = split_documents(docs)
    import sentencepiece as spm

    text_hash = hashlib.sha256("\x00".join(t for _, t in docs).encode()).hexdigest()
    key = hashlib.sha256(json.dumps({"text": text_hash, "sp": SP_SETTINGS, "val": VAL_FRACTION_OF_CHARS,
                                     "format": FORMAT_VERSION, "spm": spm.__version__},
                                    sort_keys=True).encode()).hexdigest()
    out = datasets / f"builtin_{key[:12]}"
    if not (out / "meta.json").is_file():
        tmp = datasets / f".builtin_{key[:12]}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        lines = (line for text in train_docs for line in text.splitlines() if line.strip())
        spm.SentencePieceTrainer.train(sentence_iterator=lines, model_prefix=str(tmp / "builtin_1024_bpe"),
                                       num_threads=os.cpu_count() or 1, minloglevel=2, **SP_SETTINGS)
        sp = spm.SentencePieceProcessor(model_file=str(tmp / "builtin_1024_bpe.model"))
        counts = {}
        for split, texts in (("val", val_docs), ("train", train_docs)):
            encoded = sp.encode(texts, out_type=int)
            tokens = np.concatenate([np.asarray([sp.bos_id(), *ids], dtype=np.int64) for ids in encoded])
            write_shard(tmp / f"builtin_{split}_000000.bin", tokens)
            counts[f"{split}_documents"], counts[f"{split}_tokens"] = len(texts), int(tokens.size)
        meta = {"name": "builtin", "content_hash": key, "text_sha256": text_hash, "python": sys.version,
                "tokenizer_sha256": hashlib.sha256((tmp / "builtin_1024_bpe.model").read_bytes()).hexdigest(),
                "sentencepiece": spm.__version__, "tokenizer_settings": SP_SETTINGS,
                "text_bytes": sum(len(t.encode()) for _, t in docs), **counts}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        try:
            os.replace(tmp, out)
        except OSError:  # another process finished the same build first
            shutil.rmtree(tmp, ignore_errors=True)
    index[fingerprint] = out.name
    tmp_index = index_path.with_name(index_path.name + f".tmp{os.getpid()}")
    tmp_index.write_text(json.dumps(index, indent=2))
    os.replace(tmp_index, index_path)
    log(f"builtin corpus: built {out} in {time.perf_counter() - t0:.1f}s")
    return out
