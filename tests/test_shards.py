import numpy as np
import pytest

from harness.data.shards import HEADER_BYTES, SHARD_MAGIC, ShardError, read_shard, shard_token_count, write_shard


def test_shard_round_trip_is_byte_exact(tmp_path):
    tokens = np.array([0, 1, 1023, 65535, 42], dtype=np.int64)
    path = tmp_path / "x_val_000000.bin"
    write_shard(path, tokens)
    raw = path.read_bytes()
    assert len(raw) == HEADER_BYTES + 2 * tokens.size
    header = np.frombuffer(raw[:HEADER_BYTES], dtype="<i4")
    assert (int(header[0]), int(header[1]), int(header[2])) == (SHARD_MAGIC, 1, tokens.size)
    assert not header[3:].any()
    assert raw[HEADER_BYTES:] == tokens.astype("<u2").tobytes()
    np.testing.assert_array_equal(read_shard(path), tokens)


def _corrupt(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("mutate, message", [
    (lambda raw: b"\x00\x00\x00\x00" + raw[4:], "bad magic"),
    (lambda raw: raw[:4] + (2).to_bytes(4, "little") + raw[8:], "unsupported version"),
    (lambda raw: raw[:-2], "truncated"),
    (lambda raw: raw + b"\x00\x00", "longer than its header says"),
    (lambda raw: raw[:100], "shorter than the 1024-byte header"),
])
def test_corrupt_shards_are_named_errors(tmp_path, mutate, message):
    good = tmp_path / "good.bin"
    write_shard(good, np.arange(10))
    bad = _corrupt(tmp_path / "bad_train_000000.bin", mutate(good.read_bytes()))
    with pytest.raises(ShardError) as info:
        shard_token_count(bad)
    assert message in str(info.value) and str(bad) in str(info.value)


def test_tokens_that_do_not_fit_uint16_are_refused(tmp_path):
    with pytest.raises(ValueError):
        write_shard(tmp_path / "x.bin", np.array([70000]))
