"""CheckpointStore: atomic save/load of payload + offsets, locally and through a pyarrow URI."""

from __future__ import annotations

import os
import uuid

import pytest

from actors.checkpoint import CheckpointConfig, CheckpointError, CheckpointStore


def test_roundtrip_local(tmp_path):
    store = CheckpointStore(str(tmp_path / "ck"))
    assert store.load("shard-0") is None
    payload = os.urandom(100_000)
    store.save("shard-0", payload, {0: 12, 3: 7})
    assert store.load("shard-0") == (payload, {0: 12, 3: 7})
    store.save("shard-0", b"second", {0: 20})
    assert store.load("shard-0") == (b"second", {0: 20})
    assert store.names() == ["shard-0"]
    # no temp files left behind
    assert sorted(os.listdir(tmp_path / "ck")) == ["shard-0.ckpt"]
    store.delete("shard-0")
    assert store.load("shard-0") is None


def test_file_uri_and_mock_filesystem(tmp_path):
    store = CheckpointStore("file://" + str(tmp_path))
    store.save("a", b"x", {1: 2})
    assert store.load("a") == (b"x", {1: 2})
    mock = CheckpointStore(f"mock:///bucket/{uuid.uuid4().hex}")  # goes through pyarrow.fs
    assert mock.load("a") is None
    mock.save("a", b"hello", {0: 5})
    mock.save("a", b"hello2", {0: 6})
    assert mock.load("a") == (b"hello2", {0: 6})
    assert mock.names() == ["a"] and mock.exists("a")


def test_torn_or_corrupt_file_is_reported_not_loaded(tmp_path):
    store = CheckpointStore(str(tmp_path))
    store.save("s", b"payload-bytes", {0: 1})
    path = tmp_path / "s.ckpt"
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="corrupt"):
        store.load("s")
    path.write_bytes(bytes(blob[:10]))
    with pytest.raises(CheckpointError, match="torn"):
        store.load("s")
    path.write_bytes(b"NOPE" + bytes(40))
    with pytest.raises(CheckpointError, match="not a genrec checkpoint"):
        store.load("s")


def test_stale_temp_file_from_a_crash_is_ignored(tmp_path):
    store = CheckpointStore(str(tmp_path))
    store.save("s", b"good", {0: 3})
    (tmp_path / "s.ckpt.tmp-deadbeef").write_bytes(b"half written")
    assert store.load("s") == (b"good", {0: 3})
    assert store.names() == ["s"]


def test_bad_names_and_config_are_clear_errors(tmp_path):
    store = CheckpointStore(str(tmp_path))
    with pytest.raises(ValueError, match="checkpoint name"):
        store.save("../escape", b"", {})
    with pytest.raises(ValueError, match="every_events"):
        CheckpointConfig(uri=str(tmp_path), every_events=0)
    with pytest.raises(ValueError, match="every_s"):
        CheckpointConfig(uri=str(tmp_path), every_s=0)


@pytest.mark.parametrize("uri_of", [lambda p: str(p), lambda p: "mock:///ck"])
def test_payload_as_buffers_is_written_as_if_joined(tmp_path, uri_of):
    import numpy as np

    store = CheckpointStore(uri_of(tmp_path))
    arr = np.arange(5000, dtype=np.int64)
    pieces = [b"head", memoryview(arr).cast("B"), b"", bytearray(b"tail")]
    joined = b"head" + arr.tobytes() + b"tail"
    n = store.save("s", pieces, {2: 9})
    assert store.load("s") == (joined, {2: 9})
    assert n == len(CheckpointStore.encode(joined, {2: 9})) == len(CheckpointStore.encode(pieces, {2: 9}))
    assert CheckpointStore.encode(pieces, {2: 9}) == CheckpointStore.encode(joined, {2: 9})
