"""The model registry: every generator version as safetensors + JSON, published atomically, loaded by name.

Layout under the root (a local directory or any pyarrow filesystem URI)::

    versions/<version>/weights.safetensors   tensors (models.generator.checkpoint)
    versions/<version>/config.json           generator / MTP config, item ids, tokenizer version
    versions/<version>/meta.json             parent, data window, metrics, created, sha256 of both files
    versions/<version>/verdict.json          the gate's verdict (written later, may change)
    promoted.json                            {"version": ..., "history": [...]} — what serving defaults to
    <area>/<name>/<file>                     other artefacts beside the versions (reward_models/<name>/...:
                                             actors.align_job.RewardModelStore), same atomic writes

Invariants:

* **Atomic publish.** ``meta.json`` is written last, each file through a temp object moved into place, and
  it holds the SHA-256 of the weights and the config. A version exists only when its ``meta.json`` does
  and both digests match; a publisher killed at any instant leaves no version (its temp files are
  ignored), never a half one. Versions are immutable: publishing a name twice is refused.
* **Loading never executes code**: tensors and JSON only (:mod:`models.generator.checkpoint`).
* **Only registered versions.** Names are ``[A-Za-z0-9._-]`` (no path separators), so a name cannot point
  outside the registry; serving loads by name, never by path.

``promote`` / ``rollback`` move the pointer in ``promoted.json`` (one atomic write each). ``promote``
requires a verdict whose ``passed`` is exactly true (``--no-gate`` waives only a *missing* verdict, for a
first hand-checked version); a failed one blocks it. Serving replicas poll :meth:`ModelRegistry.promoted`
and load the new version beside the running one (:mod:`serving.recommender_follow`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from dataclasses import dataclass, field

from models.generator.checkpoint import CheckpointError, GeneratorBundle, decode, encode, read_config
from models.serialization import plain_json

VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}$")
_FILES = ("weights.safetensors", "config.json")


class RegistryError(ValueError):
    """A registry request that cannot be served; the message names the fix."""


@dataclass(frozen=True)
class VersionInfo:
    """What the registry knows about one version (``meta.json`` plus the verdict)."""

    version: str
    parent: str | None
    created_ms: int
    tokenizer_version: str
    level_sizes: tuple[int, ...]
    data_window: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    verdict: dict | None = None
    has_mtp_heads: bool = False

    def to_dict(self) -> dict:
        return {"version": self.version, "parent": self.parent, "created_ms": self.created_ms,
                "tokenizer_version": self.tokenizer_version, "level_sizes": list(self.level_sizes),
                "data_window": self.data_window, "metrics": self.metrics, "verdict": self.verdict,
                "has_mtp_heads": self.has_mtp_heads}


def check_version_name(version: str) -> str:
    if not isinstance(version, str) or not VERSION_RE.match(version) or ".." in version:
        raise RegistryError(f"model version {version!r}: use 1-64 characters of [A-Za-z0-9._-] starting with a "
                            "letter or digit (a name in the registry, never a path)")
    return version


class ModelRegistry:
    """Publish, list, load, judge and promote generator versions under ``uri``."""

    def __init__(self, uri: str):
        if not uri:
            raise RegistryError("the model registry needs a directory or a pyarrow filesystem URI "
                                "(registry: in genrec.yaml, or --registry)")
        import pyarrow.fs as pafs

        self.uri = uri
        self._local = "://" not in uri or uri.startswith("file://")
        if self._local:
            root = os.path.abspath(uri[len("file://"):] if uri.startswith("file://") else uri)
            self._fs, self._root = pafs.LocalFileSystem(), root
        else:
            self._fs, root = pafs.FileSystem.from_uri(uri)
            self._root = root.rstrip("/")

    # -- files ---------------------------------------------------------------------------------

    def _dir(self, version: str) -> str:
        return f"{self._root}/versions/{check_version_name(version)}"

    def _read(self, path: str) -> bytes | None:
        import pyarrow.fs as pafs

        if self._fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with self._fs.open_input_stream(path) as f:
            return f.read()

    def _put(self, path: str, data: bytes) -> None:
        """Write ``path`` so that readers see the old object or the whole new one (temp, then move)."""
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        if self._local:   # fsync file and folder: the rename survives a power cut, not only a kill
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            dfd = os.open(os.path.dirname(path), os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
            return
        with self._fs.open_output_stream(tmp) as f:
            f.write(data)
        self._fs.move(tmp, path)

    # -- side areas: other artefacts stored beside the versions with the same atomic writes --------

    def _area(self, area: str, name: str = "") -> str:
        check_version_name(area)
        return f"{self._root}/{area}" + (f"/{check_version_name(name)}" if name else "")

    def put_artifact(self, area: str, name: str, filename: str, data: bytes) -> str:
        """Write ``<registry>/<area>/<name>/<filename>`` atomically (e.g. the reward models beside the
        versions); returns the folder. ``area``, ``name`` and ``filename`` are names, never paths."""
        check_version_name(filename)
        d = self._area(area, name)
        self._fs.create_dir(d, recursive=True)
        self._put(f"{d}/{filename}", data)
        return d

    def read_artifact(self, area: str, name: str, filename: str) -> bytes | None:
        """The bytes :meth:`put_artifact` wrote, or None when the file does not exist."""
        check_version_name(filename)
        return self._read(f"{self._area(area, name)}/{filename}")

    def artifact_names(self, area: str) -> list[str]:
        """The names (folders) in ``area``, unordered; empty when the area does not exist."""
        import pyarrow.fs as pafs

        infos = self._fs.get_file_info(pafs.FileSelector(self._area(area), allow_not_found=True))
        return [e.base_name for e in infos if e.type == pafs.FileType.Directory]

    def _meta(self, version: str) -> dict | None:
        raw = self._read(f"{self._dir(version)}/meta.json")
        return None if raw is None else json.loads(raw.decode())

    # -- publish and read ------------------------------------------------------------------------

    def publish(self, version: str, bundle: GeneratorBundle, *, parent: str | None = None,
                data_window: dict | None = None, metrics: dict | None = None) -> VersionInfo:
        """Store ``bundle`` as ``version`` (immutable; atomic, see the module docstring)."""
        d = self._dir(version)
        if self._meta(version) is not None:
            raise RegistryError(f"model version {version!r} already exists in {self.uri}; versions are "
                                "immutable, publish under a new name")
        if parent is not None and self._meta(parent) is None:
            raise RegistryError(f"parent version {parent!r} is not in {self.uri}")
        weights, config = encode(bundle)
        self._fs.create_dir(d, recursive=True)
        for name, data in zip(_FILES, (weights, config)):
            self._put(f"{d}/{name}", data)
        meta = {"version": version, "parent": parent, "created_ms": int(time.time() * 1000),
                "tokenizer_version": bundle.tokenizer_version, "level_sizes": list(bundle.level_sizes),
                "data_window": plain_json(data_window or {}), "metrics": plain_json(metrics or {}),
                "has_mtp_heads": bundle.mtp_heads is not None,
                "sha256": {n: hashlib.sha256(b).hexdigest() for n, b in zip(_FILES, (weights, config))}}
        self._put(f"{d}/meta.json", json.dumps(meta, sort_keys=True).encode())
        return self.info(version)

    def versions(self) -> list[VersionInfo]:
        """Every complete version, oldest first (folders without ``meta.json`` are unfinished publishes)."""
        import pyarrow.fs as pafs

        infos = []
        for entry in self._fs.get_file_info(pafs.FileSelector(f"{self._root}/versions", allow_not_found=True)):
            if entry.type == pafs.FileType.Directory and VERSION_RE.match(entry.base_name):
                try:
                    self._check_inside(entry.base_name)
                except RegistryError:
                    continue
                meta = self._meta(entry.base_name)
                if meta is not None:
                    infos.append(self._info(entry.base_name, meta))
        return sorted(infos, key=lambda i: (i.created_ms, i.version))

    def info(self, version: str) -> VersionInfo:
        return self._info(version, self._known_meta(version))

    def _check_inside(self, version: str) -> None:
        """Refuse a local version folder that resolves outside the registry (a symlink planted in
        ``versions/``): the registry serves only what it holds."""
        if not self._local:
            return
        d = os.path.realpath(self._dir(version))
        root = os.path.realpath(os.path.join(self._root, "versions"))
        if os.path.lexists(self._dir(version)) and not d.startswith(root + os.sep):
            raise RegistryError(f"model version {version!r} resolves to {d}, outside the registry {self.uri}: "
                                "refused; versions are folders the registry wrote, publish it properly")

    def _known_meta(self, version: str) -> dict:
        """``meta.json`` of ``version``; :class:`RegistryError` naming the versions there when it is absent."""
        self._check_inside(version)
        meta = self._meta(version)
        if meta is None:
            known = ", ".join(i for i in self._names()) or "none"
            raise RegistryError(f"model version {version!r} is not in the registry {self.uri} (versions: {known}); "
                                "publish one with `genrec train --registry URI --version NAME`")
        return meta

    def _info(self, version: str, meta: dict) -> VersionInfo:
        raw = self._read(f"{self._dir(version)}/verdict.json")
        return VersionInfo(version, meta.get("parent"), int(meta["created_ms"]), meta.get("tokenizer_version", ""),
                           tuple(meta.get("level_sizes", ())), meta.get("data_window", {}), meta.get("metrics", {}),
                           None if raw is None else json.loads(raw.decode()), bool(meta.get("has_mtp_heads")))

    def _names(self) -> list[str]:
        import pyarrow.fs as pafs

        return sorted(e.base_name for e in self._fs.get_file_info(
            pafs.FileSelector(f"{self._root}/versions", allow_not_found=True)) if e.type == pafs.FileType.Directory)

    def load(self, version: str, device: str = "cpu", *, level_sizes: tuple[int, ...] | None = None,
             tokenizer_version: str | None = None) -> GeneratorBundle:
        """The bundle of ``version``, verified against its digests and, when given, the serving catalog's
        ``level_sizes`` and ``tokenizer_version``; :class:`RegistryError` otherwise."""
        meta = self._known_meta(version)
        info = self._info(version, meta)
        d = self._dir(version)
        blobs = []
        for name in _FILES:
            data = self._read(f"{d}/{name}")
            if data is None:
                raise RegistryError(f"model version {version!r}: {name} is missing in {self.uri}; the version is "
                                    "damaged, publish it again under a new name")
            if hashlib.sha256(data).hexdigest() != meta["sha256"][name]:
                raise RegistryError(f"model version {version!r}: {name} does not match its SHA-256 in meta.json "
                                    "(corrupted or replaced); publish it again under a new name")
            blobs.append(data)
        if level_sizes is not None and tuple(info.level_sizes) != tuple(level_sizes):
            raise RegistryError(f"model version {version!r} has level_sizes {info.level_sizes} but the serving "
                                f"catalog has {tuple(level_sizes)}: serve versions trained with this tokenizer")
        if tokenizer_version and info.tokenizer_version and tokenizer_version != info.tokenizer_version:
            raise RegistryError(f"model version {version!r} was trained with tokenizer {info.tokenizer_version!r}, "
                                f"the serving catalog uses {tokenizer_version!r}: retrain on this tokenizer")
        try:
            return decode(blobs[0], blobs[1], device)
        except CheckpointError as e:
            raise RegistryError(f"model version {version!r}: {e}") from None

    def config_of(self, version: str) -> dict:
        """The JSON config of ``version`` (no weights read)."""
        raw = self._read(f"{self._dir(version)}/config.json")
        if raw is None or self._meta(version) is None:
            raise RegistryError(f"model version {version!r} is not in the registry {self.uri}")
        return read_config(raw)

    # -- gate and rollout ----------------------------------------------------------------------

    def set_verdict(self, version: str, verdict: dict) -> VersionInfo:
        """Record the gate's verdict (``{"passed": bool, ...}``) for ``version``."""
        self.info(version)
        if not isinstance(verdict, dict) or not isinstance(verdict.get("passed"), bool):
            raise RegistryError(f"a verdict is a mapping with a boolean 'passed', got {verdict!r}")
        self._put(f"{self._dir(version)}/verdict.json", json.dumps(plain_json(verdict), sort_keys=True).encode())
        return self.info(version)

    def require_passing(self, version: str) -> VersionInfo:
        """The info of ``version`` when its gate verdict passed; :class:`RegistryError` saying why not otherwise
        (what an experiment arm or an admin promote asks before a version may take traffic)."""
        info = self.info(version)
        if info.verdict is None:
            raise RegistryError(f"model version {version!r} has no gate verdict; run `genrec models gate {version}` "
                                "first: only versions that passed their gate take traffic")
        if info.verdict.get("passed") is not True:
            raise RegistryError(f"model version {version!r} failed its gate ({info.verdict.get('reason', 'no reason')}); "
                                "it never receives traffic")
        return info

    def refused_by_gate(self, version: str) -> str | None:
        """Why serving must not load ``version`` (its verdict exists and did not pass), or None.

        A version without a verdict is not refused here: only an explicit ``promote --no-gate`` (a first,
        hand-checked version) or a rollback can point serving at one."""
        verdict = self.info(version).verdict
        if verdict is not None and verdict.get("passed") is not True:
            return f"model version {version!r} failed its gate ({verdict.get('reason', 'no reason')})"
        return None

    def _pointer(self) -> dict:
        raw = self._read(f"{self._root}/promoted.json")
        return {"version": None, "history": []} if raw is None else json.loads(raw.decode())

    def promoted(self) -> str | None:
        """The version serving defaults to, or None before the first promote."""
        return self._pointer()["version"]

    def promote(self, version: str, *, require_verdict: bool = True) -> str | None:
        """Make ``version`` the default; returns the previous one. Refused for a version whose gate failed
        (or, with ``require_verdict``, that was never judged)."""
        info = self.info(version)
        if info.verdict is not None and info.verdict.get("passed") is not True:
            raise RegistryError(f"model version {version!r} failed its gate ({info.verdict.get('reason', 'no reason')}); "
                                "it never receives traffic")
        if require_verdict and info.verdict is None:
            raise RegistryError(f"model version {version!r} has no gate verdict yet; run `genrec models gate "
                                f"{version}` or promote with --no-gate (for a first, hand-checked version)")
        ptr = self._pointer()
        previous = ptr["version"]
        if previous != version:
            history = ([previous] if previous else []) + ptr["history"]
            self._put(f"{self._root}/promoted.json", json.dumps({"version": version, "history": history[:50]}).encode())
        return previous

    def rollback(self) -> str:
        """Restore the version promoted before the current one; returns it."""
        ptr = self._pointer()
        if not ptr["history"]:
            raise RegistryError(f"nothing to roll back to in {self.uri}: "
                                f"{'only ' + ptr['version'] + ' was ever promoted' if ptr['version'] else 'no promote yet'}")
        restored, rest = ptr["history"][0], ptr["history"][1:]
        self._put(f"{self._root}/promoted.json", json.dumps({"version": restored, "history": rest}).encode())
        return restored

    def __repr__(self) -> str:
        return f"ModelRegistry({self.uri!r})"

