"""Tokenizers and the byte tables the metric needs.

val_bpb divides by the UTF-8 bytes each target token stands for. Following the challenge: a piece's bytes are
its UTF-8 length with a leading "▁" removed (byte-fallback pieces count 1; control, unknown and unused pieces
0), and a piece that had a leading "▁" adds 1 byte unless the previous token is a control/unknown/unused one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import UserError


@dataclass(frozen=True)
class ByteTables:
    """Per-token-id tables: base bytes, whether the piece had a leading space, whether it is a boundary."""
    base_bytes: np.ndarray        # int16
    has_leading_space: np.ndarray  # bool
    is_boundary: np.ndarray        # bool: control, unknown or unused

    def count_bytes(self, prev_ids: np.ndarray, target_ids: np.ndarray) -> int:
        """Bytes the targets stand for, given the tokens right before them (the challenge's accounting)."""
        extra = self.has_leading_space[target_ids] & ~self.is_boundary[prev_ids]
        return int(self.base_bytes[target_ids].astype(np.int64).sum() + extra.sum())


@dataclass(frozen=True)
class Tokenizer:
    name: str
    vocab_size: int
    tables: ByteTables
    content_hash: str
    path: str | None = None
    processor: Any = field(default=None, compare=False, repr=False)  # the SentencePieceProcessor, if any


def sentencepiece_tokenizer(path: Path) -> Tokenizer:
    import sentencepiece as spm

    path = Path(path)
    if not path.is_file():
        raise UserError(f"tokenizer file {path} does not exist")
    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as exc:
        raise UserError(f"tokenizer file {path} is not a SentencePiece model: {exc}") from None
    n = int(sp.vocab_size())
    base = np.zeros(n, dtype=np.int16)
    space = np.zeros(n, dtype=bool)
    boundary = np.ones(n, dtype=bool)
    for i in range(n):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        boundary[i] = False
        if sp.is_byte(i):
            base[i] = 1
            continue
        piece = sp.id_to_piece(i)
        if piece.startswith("\u2581"):
            space[i] = True
            piece = piece[1:]
        base[i] = len(piece.encode("utf-8"))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return Tokenizer(name=path.stem, vocab_size=n, tables=ByteTables(base, space, boundary),
                     content_hash=digest, path=str(path), processor=sp)


def round_trip_agreement(tokenizer: Tokenizer, tokens: np.ndarray) -> float:
    """How well `tokenizer` explains token ids it is said to have made: the ids are cut at boundary tokens
    (document starts), each piece decoded to text and encoded again, and the share of ids that come back the
    same is returned. The tokenizer that made them gives 1 (its encodings are canonical, so they come back
    unchanged); another tokenizer, even one of the same size and settings, reads them as pieces it would never
    have put side by side, and merges about a tenth of them differently (0.89 in the tests)."""
    sp = tokenizer.processor
    if sp is None or tokens.size == 0:
        return 1.0
    import difflib

    ids = tokens.astype(np.int64).tolist()
    cuts = [i for i, t in enumerate(ids) if t >= tokenizer.vocab_size or tokenizer.tables.is_boundary[t]]
    same = total = 0
    for start, end in zip([0, *[c + 1 for c in cuts]], [*cuts, len(ids)]):
        piece = [t for t in ids[start:end] if t < tokenizer.vocab_size]
        if not piece:
            continue
        again = sp.encode(sp.decode(piece), out_type=int)
        matcher = difflib.SequenceMatcher(a=piece, b=again, autojunk=False)
        same += sum(block.size for block in matcher.get_matching_blocks())
        total += max(len(piece), len(again))
    return same / total if total else 1.0


BYTE_OFFSET = 4  # ids 0..3 are pad/bos/eos/unk, as in the challenge's byte260 export


def byte_tokenizer() -> Tokenizer:
    """One token per byte (id = byte + 4), specials 0..3: every byte token stands for exactly one byte."""
    n = 256 + BYTE_OFFSET
    base = np.ones(n, dtype=np.int16)
    base[:BYTE_OFFSET] = 0
    boundary = np.zeros(n, dtype=bool)
    boundary[:BYTE_OFFSET] = True
    tables = ByteTables(base, np.zeros(n, dtype=bool), boundary)
    return Tokenizer(name="byte260", vocab_size=n, tables=tables,
                     content_hash=hashlib.sha256(b"byte260-v1").hexdigest())
