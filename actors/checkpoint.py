"""Atomic checkpoints: a state payload *and* the Kafka offsets it reflects, in one file.

Exactly-once state (docs/architecture.md §4) rests on one invariant: the offsets stored
with a state are exactly the offsets that state has consumed up to. Both are
therefore written in a single file, and that file appears atomically:

* local paths: write ``<name>.ckpt.tmp-<random>``, ``fsync`` it, ``rename`` it
  over ``<name>.ckpt`` (atomic on POSIX), then ``fsync`` the directory so the
  rename itself survives a power cut;
* any other pyarrow filesystem URI (``s3://…``, ``gs://…``, ``hdfs://…``,
  ``mock://…``): write the temp object through ``pyarrow.fs`` and ``move`` it
  into place (object stores make a completed PUT visible atomically).

A crash at any instant therefore leaves either the old checkpoint or the new
one, never a mixture. The file carries a magic number, a format version and a
CRC-32 of its body, so a torn or foreign file is reported loudly instead of
being loaded as state.

File layout (little endian)::

    b"GRCK" | u16 version | u32 crc32(body) | u64 len(offsets_json) | u64 len(payload) | body
    body = offsets_json (UTF-8 ``{"partition": next_offset}``) + payload

Used by the sequence shards (actors/sequence_shard.py) and the item indexer.
"""

from __future__ import annotations

import json
import os
import re
import struct
import uuid
import zlib
from dataclasses import dataclass
from typing import Sequence

MAGIC = b"GRCK"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<4sHIQQ")
_SUFFIX = ".ckpt"
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,200}$")


class CheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be trusted (torn, foreign, or a newer format)."""


@dataclass(frozen=True)
class CheckpointConfig:
    """Where checkpoints go and how often a streaming actor writes them.

    ``uri`` is a local directory or any pyarrow filesystem URI. A checkpoint is
    due after ``every_events`` applied events or ``every_s`` seconds since the
    last one, whichever comes first (and only when something changed).
    """

    uri: str
    every_events: int = 50_000
    every_s: float = 5.0

    def __post_init__(self) -> None:
        if not self.uri:
            raise ValueError("CheckpointConfig.uri is empty; give a directory or a pyarrow URI (s3://bucket/dir)")
        if self.every_events < 1:
            raise ValueError(f"CheckpointConfig.every_events={self.every_events} must be >= 1")
        if not self.every_s > 0:
            raise ValueError(f"CheckpointConfig.every_s={self.every_s} must be > 0 seconds")


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


class CheckpointStore:
    """Save and load named checkpoints under one directory (local or remote)."""

    def __init__(self, uri: str):
        if not uri:
            raise ValueError("CheckpointStore needs a directory or a pyarrow filesystem URI, got ''")
        self.uri = uri
        self._local = _is_local(uri)
        if self._local:
            self._dir = uri[len("file://"):] if uri.startswith("file://") else uri
            os.makedirs(self._dir, exist_ok=True)
            self._fs = None
        else:
            import pyarrow.fs as pafs

            self._fs, self._dir = pafs.FileSystem.from_uri(uri)
            self._dir = self._dir.rstrip("/")
            self._fs.create_dir(self._dir, recursive=True)

    # -- paths -----------------------------------------------------------------------------

    @staticmethod
    def _check_name(name: str) -> None:
        if not _NAME_RE.match(name or ""):
            raise ValueError(f"checkpoint name {name!r} must be 1-200 chars of [A-Za-z0-9_.-]")

    def _path(self, name: str) -> str:
        return f"{self._dir}/{name}{_SUFFIX}"

    # -- encode / decode -------------------------------------------------------------------

    @staticmethod
    def encode(payload: bytes | Sequence[bytes], offsets: dict[int, int]) -> bytes:
        """The file bytes of one checkpoint (header + offsets JSON + payload)."""
        return b"".join(CheckpointStore._pieces(payload, offsets))

    @staticmethod
    def _pieces(payload: bytes | Sequence[bytes], offsets: dict[int, int]) -> list:
        """``[header, offsets JSON, *payload]`` — the file as buffers, never joined (no copy of the payload).

        ``payload`` is bytes or a sequence of bytes-like buffers that together
        form it (written back to back).
        """
        parts = [payload] if isinstance(payload, (bytes, bytearray, memoryview)) else list(payload)
        off = json.dumps({str(int(p)): int(o) for p, o in sorted(offsets.items())}).encode("utf-8")
        crc = zlib.crc32(off)
        for p in parts:  # == crc32(off + payload); zlib releases the GIL on large buffers
            crc = zlib.crc32(p, crc)
        n_pay = sum(memoryview(p).nbytes for p in parts)
        return [_HEADER.pack(MAGIC, FORMAT_VERSION, crc, len(off), n_pay), off, *parts]

    @staticmethod
    def decode(blob: bytes, where: str = "checkpoint") -> tuple[bytes, dict[int, int]]:
        """Parse file bytes back into ``(payload, offsets)``; :class:`CheckpointError` if untrustworthy."""
        if len(blob) < _HEADER.size:
            raise CheckpointError(f"{where}: {len(blob)} bytes is shorter than the header; the file is torn")
        magic, version, crc, n_off, n_pay = _HEADER.unpack_from(blob)
        if magic != MAGIC:
            raise CheckpointError(f"{where}: not a genrec checkpoint (magic {magic!r})")
        if version > FORMAT_VERSION:
            raise CheckpointError(f"{where}: format version {version} is newer than this code "
                                  f"({FORMAT_VERSION}); upgrade genrec to read it")
        body = memoryview(blob)[_HEADER.size:]
        if len(body) != n_off + n_pay or zlib.crc32(body) != crc:
            raise CheckpointError(f"{where}: checksum/length mismatch; the file is corrupt — "
                                  "delete it to restart from the beginning of the topic")
        offsets = {int(p): int(o) for p, o in json.loads(bytes(body[:n_off]).decode("utf-8")).items()}
        return bytes(body[n_off:]), offsets

    # -- API -------------------------------------------------------------------------------

    def save(self, name: str, payload: bytes | Sequence[bytes], offsets: dict[int, int]) -> int:
        """Atomically replace checkpoint ``name`` with ``payload`` + ``offsets``; returns bytes written.

        ``payload`` may be a sequence of buffers (written back to back, as if joined).
        """
        self._check_name(name)
        pieces = self._pieces(payload, offsets)
        size = sum(memoryview(p).nbytes for p in pieces)
        final = self._path(name)
        tmp = f"{final}.tmp-{uuid.uuid4().hex[:12]}"
        if self._local:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                for piece in pieces:  # written in place: the payload is never copied into one blob
                    view = memoryview(piece)
                    while view:
                        view = view[os.write(fd, view):]
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                _silent_remove(tmp)
                raise
            os.close(fd)
            os.replace(tmp, final)
            _fsync_dir(self._dir)
        else:
            try:
                with self._fs.open_output_stream(tmp) as out:
                    for piece in pieces:
                        out.write(piece)
                self._fs.move(tmp, final)
            except BaseException:
                try:
                    self._fs.delete_file(tmp)
                except Exception:
                    pass
                raise
        return size

    def load(self, name: str) -> tuple[bytes, dict[int, int]] | None:
        """``(payload, offsets)`` of checkpoint ``name``, or None when there is none yet."""
        self._check_name(name)
        path = self._path(name)
        if self._local:
            try:
                with open(path, "rb") as f:
                    blob = f.read()
            except FileNotFoundError:
                return None
        else:
            import pyarrow.fs as pafs

            if self._fs.get_file_info(path).type != pafs.FileType.File:
                return None
            with self._fs.open_input_stream(path) as f:
                blob = f.read()
        return self.decode(blob, where=f"{self.uri}/{name}{_SUFFIX}")

    def exists(self, name: str) -> bool:
        self._check_name(name)
        if self._local:
            return os.path.isfile(self._path(name))
        import pyarrow.fs as pafs

        return self._fs.get_file_info(self._path(name)).type == pafs.FileType.File

    def names(self) -> list[str]:
        """Names of the checkpoints in the directory (temp files left by a crash are ignored)."""
        if self._local:
            entries = os.listdir(self._dir)
        else:
            import pyarrow.fs as pafs

            entries = [i.base_name for i in self._fs.get_file_info(pafs.FileSelector(self._dir))]
        return sorted(e[: -len(_SUFFIX)] for e in entries if e.endswith(_SUFFIX))

    def delete(self, name: str) -> None:
        self._check_name(name)
        if self._local:
            _silent_remove(self._path(name))
        elif self.exists(name):
            self._fs.delete_file(self._path(name))

    def __repr__(self) -> str:
        return f"CheckpointStore({self.uri!r})"


def _silent_remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
