"""Ray token authentication for the genrec commands that start or join a Ray cluster (SECURITY.md).

An unauthenticated Ray cluster runs any code a network peer sends it (CVE-2023-48022), and a Ray
node's ports (GCS, raylet, object manager) listen on every interface, even for a local
``ray.init()``. So genrec runs Ray with token authentication (``RAY_AUTH_MODE=token``):

- The token never travels on a command line. Ray reads it from ``RAY_AUTH_TOKEN_PATH`` (a file,
  e.g. a mounted secret), else ``RAY_AUTH_TOKEN`` (the environment, e.g. injected by a secret
  manager), else ``~/.ray/auth_token``. ``ray get-auth-token --generate`` makes one on the head.
- Joining a cluster (``--address`` / ``--ray-address`` / ``RAY_ADDRESS``) needs token mode and a
  token; ``RAY_AUTH_MODE=disabled`` there is refused with an error that says what to set.
- A local Ray this process starts for itself uses token mode too (Ray generates
  ``~/.ray/auth_token`` when there is none). The one exception is an explicit
  ``RAY_AUTH_MODE=disabled`` for a local single-machine Ray (the test suite and the benchmarks set
  it: many short-lived local clusters on a trusted machine); it is logged as a warning.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import MutableMapping

log = logging.getLogger(__name__)

MODE_ENV, TOKEN_ENV, TOKEN_PATH_ENV = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"
MODES = ("token", "disabled")
#: Where Ray looks for the token when neither environment variable names one.
DEFAULT_TOKEN_PATH = Path("~/.ray/auth_token")
HOW_TO_GET_THE_TOKEN = (f"copy the cluster's token file (on the head: `ray get-auth-token`) to this node and set "
                        f"{TOKEN_PATH_ENV}=<file> (or put it at ~/.ray/auth_token), or inject it as {TOKEN_ENV} "
                        f"from a secret store; see SECURITY.md")


def joins_cluster(address: str | None, environ: MutableMapping[str, str]) -> str | None:
    """The address of the running cluster to join (``address`` or ``RAY_ADDRESS``), or None for a local Ray."""
    addr = address or environ.get("RAY_ADDRESS")
    return None if not addr or addr == "local" else addr


def token_source(environ: MutableMapping[str, str]) -> str | None:
    """Where Ray will find the token (a file path or ``$RAY_AUTH_TOKEN``), or None when there is none."""
    path = environ.get(TOKEN_PATH_ENV)
    if path:
        if not Path(path).expanduser().is_file():
            raise FileNotFoundError(f"{TOKEN_PATH_ENV}={path} does not exist; {HOW_TO_GET_THE_TOKEN}")
        return path
    if environ.get(TOKEN_ENV):
        return f"${TOKEN_ENV}"
    default = Path(environ.get("HOME", str(Path.home()))) / ".ray" / "auth_token"
    return str(default) if default.is_file() else None


def prepare_ray_auth(address: str | None = None, environ: MutableMapping[str, str] | None = None) -> str:
    """Set ``RAY_AUTH_MODE`` before ``ray.init`` / ``serve.start``; returns the mode (``token`` or ``disabled``).

    Joining a cluster: token mode, and a token must be found (errors say how a node gets it). A local Ray:
    token mode unless ``RAY_AUTH_MODE=disabled`` is set explicitly (the narrow local exception).
    """
    environ = os.environ if environ is None else environ
    mode = (environ.get(MODE_ENV) or "").lower()
    if mode and mode not in MODES:
        raise ValueError(f"{MODE_ENV}={environ[MODE_ENV]!r}: use 'token' (or 'disabled' for a local test Ray only)")
    cluster = joins_cluster(address, environ)
    if cluster is not None:
        if mode == "disabled":
            raise ValueError(f"refusing to join the Ray cluster at {cluster} with {MODE_ENV}=disabled: an "
                             f"unauthenticated Ray cluster runs any code sent to it. Set {MODE_ENV}=token and "
                             f"{HOW_TO_GET_THE_TOKEN}")
        _set_token_mode(environ)
        if token_source(environ) is None:
            raise ValueError(f"no Ray authentication token to join {cluster}: {HOW_TO_GET_THE_TOKEN}")
        return "token"
    if mode == "disabled":
        log.warning("Ray token authentication is disabled (%s=disabled): acceptable only for a local Ray on a "
                    "trusted machine; its ports listen on every interface", MODE_ENV)
        return "disabled"
    _set_token_mode(environ)   # Ray writes ~/.ray/auth_token for a new local cluster when no token exists
    return "token"


def _set_token_mode(environ: MutableMapping[str, str]) -> None:
    """``RAY_AUTH_MODE=token``; in this process's environment, Ray's cached config re-reads it (an import of
    Ray may have read the mode already, and a driver on the old mode cannot talk to its own token-mode GCS)."""
    changed = environ.get(MODE_ENV) != "token"
    environ[MODE_ENV] = "token"
    if changed and environ is os.environ and "ray._raylet" in sys.modules:
        from ray._raylet import Config

        Config.initialize("")
