"""Token shards in the challenge's binary format, read and written byte-for-byte compatibly.

Layout: 256 little-endian int32 (magic 20240520, version 1, token count, then zeros), followed by `count`
little-endian uint16 tokens. The file size must be exactly 1024 + 2 × count.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from harness.errors import UserError

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4


class ShardError(UserError):
    """A shard file that is not in the challenge format."""


def write_shard(path: Path, tokens: np.ndarray) -> None:
    """Write tokens (any integer array with values < 65536) atomically in the shard format."""
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 2**16):
        raise ValueError(f"token ids must fit in uint16 to be written to {path}")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = SHARD_MAGIC, SHARD_VERSION, tokens.size
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype("<u2", copy=False).tobytes())
    os.replace(tmp, path)


def shard_token_count(path: Path) -> int:
    """Validate a shard's header and size and return its token count, without reading the tokens."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
    except OSError as exc:
        raise ShardError(f"cannot read shard {path}: {exc.strerror}") from None
    if len(raw) < HEADER_BYTES:
        raise ShardError(f"shard {path} is truncated: {len(raw)} bytes, shorter than the 1024-byte header")
    header = np.frombuffer(raw, dtype="<i4")
    if int(header[0]) != SHARD_MAGIC:
        raise ShardError(f"shard {path} has bad magic {int(header[0])} (expected {SHARD_MAGIC}); "
                         f"it is not a challenge-format token shard")
    if int(header[1]) != SHARD_VERSION:
        raise ShardError(f"shard {path} has unsupported version {int(header[1])} (expected {SHARD_VERSION})")
    count = int(header[2])
    expected = HEADER_BYTES + 2 * count
    if count < 0 or size != expected:
        what = "truncated" if size < expected else "longer than its header says"
        raise ShardError(f"shard {path} is {what}: {size} bytes on disk, header says {count} tokens "
                         f"({expected} bytes); re-create or re-download it")
    return count


def read_shard(path: Path) -> np.ndarray:
    """All tokens of a validated shard as a uint16 array (memory-mapped: cheap for large shards)."""
    count = shard_token_count(path)
    if count == 0:
        return np.zeros(0, dtype=np.uint16)
    return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(count,))
