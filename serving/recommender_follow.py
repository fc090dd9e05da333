"""Replicas follow the model registry's promoted pointer: a new version is served without a restart.

:class:`PromotedFollower` runs in each recommender process (a thread beside decoding). Every
``promoted_poll_s`` it reads :meth:`actors.model_registry.ModelRegistry.promoted`; when the pointer names a
version other than the one it follows, it

1. refuses a version whose gate verdict did not pass (a hand-edited pointer cannot give it traffic), one
   trained with another tokenizer than the followed version (its SIDs would name other items), and any
   version the registry refuses to load (missing or corrupted files, a folder outside the registry, other
   level sizes);
2. loads it *beside* the running versions (:meth:`serving.backend.GeneratorBackend.add_model`), and
3. only then switches: :meth:`status` names it as ``promoted.version``, which the ingress makes its
   default model version (:class:`serving.rollout.FollowingExperiments`).

A refused or failed load keeps the current version, is logged and counted (``promoted.failures``,
``promoted.last_error``), and is retried only after ``RETRY_S`` or when the pointer moves again. Rollback
is the same path: the pointer moves back, the old version (still loaded) is followed at the next poll.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)

#: A pointer target that failed is tried again after this many seconds (or at once when the pointer moves).
RETRY_S = 60.0


class PromotedFollower:
    """Follow ``registry``'s promoted pointer for ``backend`` (see the module docstring)."""

    def __init__(self, registry_uri: str, backend, poll_s: float, followed: str | None = None):
        from actors.model_registry import ModelRegistry

        self.registry = ModelRegistry(registry_uri)
        self.backend, self.poll_s = backend, float(poll_s)
        self.followed = followed          # the version switched to (loaded), None before the first
        self.switches = 0
        self.failures = 0
        self.last_error: str | None = None
        self._failed: tuple[str, float] | None = None   # (target, monotonic time) of the last failure
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_recommender(cls, cfg, backend) -> "PromotedFollower | None":
        """The follower of a recommender config (None without a registry or with ``promoted_poll_s: 0``); it
        follows the promoted version from the start when that version is among the loaded ones."""
        if not cfg.registry or not cfg.promoted_poll_s:
            return None
        f = cls(cfg.registry, backend, cfg.promoted_poll_s)
        try:
            current = f.registry.promoted()
        except Exception as e:  # noqa: BLE001 - an unreadable pointer: follow from the first good poll
            f._fail(None, f"could not read the promoted pointer: {type(e).__name__}: {e}")
            current = None
        loaded_from_registry = {m.version for m in cfg.models if m.registry}
        if current is not None and current in loaded_from_registry:
            f.followed = current
        return f

    def start(self) -> "PromotedFollower":
        self._thread = threading.Thread(target=self._run, name="promoted-follower", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.poll_once()

    def _fail(self, target: str | None, error: str) -> None:
        self.failures += 1
        self.last_error = error
        self._failed = (target, time.monotonic()) if target else None
        log.warning("promoted model not followed, keeping %s: %s", self.followed, error)

    def poll_once(self) -> str | None:
        """Read the pointer and follow it when it moved; returns the followed version. Never raises."""
        try:
            target = self.registry.promoted()
        except Exception as e:  # noqa: BLE001 - a broken pointer file or store: keep serving
            self._fail(None, f"could not read the promoted pointer: {type(e).__name__}: {e}")
            return self.followed
        if target is None or target == self.followed:
            return self.followed
        if self._failed and self._failed[0] == target and time.monotonic() - self._failed[1] < RETRY_S:
            return self.followed
        try:
            self._switch(target)
        except Exception as e:  # noqa: BLE001 - the message says why (RegistryError names the fix)
            self._fail(target, f"{target}: {type(e).__name__}: {e}"[:1000])
        return self.followed

    def _switch(self, target: str) -> None:
        from actors.model_registry import RegistryError
        from serving.backend import load_model
        from serving.requests import ModelSpec

        refused = self.registry.refused_by_gate(target)
        if refused:
            raise RegistryError(f"{refused}; the promoted pointer names it but it never receives traffic")
        if self.followed is not None:
            old, new = self.registry.info(self.followed), self.registry.info(target)
            if old.tokenizer_version and new.tokenizer_version and old.tokenizer_version != new.tokenizer_version:
                raise RegistryError(f"model version {target!r} was trained with tokenizer {new.tokenizer_version!r} "
                                    f"but the served {self.followed!r} with {old.tokenizer_version!r}: the catalog's "
                                    "SIDs are the served tokenizer's; retrain on it")
        if target not in self.backend.models:
            model, heads = load_model(ModelSpec(target, registry=self.registry.uri), self.backend.device,
                                      self.backend.catalog.level_sizes)
            self.backend.add_model(target, model, heads)
        previous, self.followed = self.followed, target
        self.switches += 1
        self._failed = None
        log.info("following promoted model %s (was %s)", target, previous)

    def status(self) -> dict:
        return {"version": self.followed, "registry": self.registry.uri, "poll_s": self.poll_s,
                "switches": self.switches, "failures": self.failures, "last_error": self.last_error}
