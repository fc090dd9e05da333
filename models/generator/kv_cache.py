"""Decoder key/value cache for incremental generation.

Autoregressive decoding of a session (item after item, ``D`` semantic-ID codes
per item) would otherwise recompute self-attention over every earlier
position at each step. The cache keeps, per decoder layer,

* the self-attention keys/values of every position decoded so far,
  ``[B, H, T, Dh]``, grown by :meth:`append`;
* the cross-attention keys/values of the encoder memory, ``[B, H, S, Dh]``,
  computed once per request (the encoder output never changes during a
  request), and the memory's padding mask ``[B, S]``.

Two operations exist for the search procedures built on top:

* :meth:`truncate` rolls the self-attention part back to ``n`` positions —
  speculative decoding (Leviathan et al., 2023, "Fast Inference from
  Transformers via Speculative Decoding") drafts several tokens, verifies them
  in one forward and discards the rejected suffix;
* :meth:`index_select` reorders / expands the batch rows — beam search keeps
  the cache of the surviving beams (and expands one request into ``W`` beams).

Cross-attention K/V are shared, not copied, when rows come in equal
request-major groups (row ``r`` uses cross row ``r // group``): expanding a
request into ``W`` beams and reordering beams *within* their request — all
beam search ever does — then costs nothing for the (large) memory K/V, and
the decoder attends with the ``W`` beams' queries stacked on one memory.

Continuous batching (Orca, Yu et al., OSDI 2022: requests join and leave a
running batch between decoding steps) needs rows at *different* positions in
one cache. :meth:`concat_rows` merges two caches into one whose rows are
left-padded to a common length; ``self_pad`` [B] records each row's padding
columns, which :meth:`models.generator.model.GenerativeRecommender.decode_ragged`
masks out. :meth:`trim` drops the columns no row needs any more.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class KVCache:
    """Per-layer K/V tensors of one decoding batch (see module docstring).

    ``self_k[i]`` / ``self_v[i]``: ``[B, H, T, Dh]`` for decoder layer ``i``
    (``T`` = :attr:`length`); ``cross_k[i]`` / ``cross_v[i]``: ``[B, H, S, Dh]``;
    ``cross_mask``: ``[B, S]`` bool, True = a real memory position.
    ``group``: rows per cross row (decoder row ``r`` reads cross row ``r // group``).
    ``self_pad``: ``[B]`` long or None — leading self-attention columns of each row that are
    padding (ragged rows of a continuous batch; None = every row uses every column).
    """

    cross_k: list[Tensor]
    cross_v: list[Tensor]
    cross_mask: Tensor
    self_k: list[Tensor] = field(default_factory=list)
    self_v: list[Tensor] = field(default_factory=list)
    group: int = 1
    self_pad: Tensor | None = None

    def __post_init__(self) -> None:
        if len(self.cross_k) != len(self.cross_v):
            raise ValueError(f"cross_k has {len(self.cross_k)} layers but cross_v {len(self.cross_v)}")
        if not self.self_k:
            b, h, _, dh = self.cross_k[0].shape
            empty = self.cross_k[0].new_zeros((b * self.group, h, 0, dh))
            self.self_k = [empty for _ in self.cross_k]
            self.self_v = [empty for _ in self.cross_k]

    # ---- facts -------------------------------------------------------------------------

    @property
    def length(self) -> int:
        """Number of decoder positions whose self-attention K/V are cached."""
        return int(self.self_k[0].shape[2])

    @property
    def batch_size(self) -> int:
        """Decoder rows (requests x beams)."""
        return int(self.cross_k[0].shape[0]) * self.group

    @property
    def num_layers(self) -> int:
        return len(self.cross_k)

    # ---- growth ------------------------------------------------------------------------

    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add new positions' K/V ``[B, H, T_new, Dh]`` to ``layer``; returns all K/V so far."""
        if k.shape[0] != self.batch_size:
            raise ValueError(f"new keys have batch {k.shape[0]}, cache has {self.batch_size}; "
                             "call index_select to expand the cache first")
        self.self_k[layer] = torch.cat([self.self_k[layer], k], dim=2)
        self.self_v[layer] = torch.cat([self.self_v[layer], v], dim=2)
        return self.self_k[layer], self.self_v[layer]

    # ---- search operations ---------------------------------------------------------------

    def truncate(self, n: int) -> "KVCache":
        """Keep only the first ``n`` decoder positions (in place; returns self).

        Used to roll back rejected speculative tokens. ``0 <= n <= length``.
        """
        if self.self_pad is not None:
            raise ValueError("truncate() on a ragged cache (self_pad set) is not supported")
        if not 0 <= n <= self.length:
            raise ValueError(f"truncate({n}) outside 0..{self.length} (the cached length)")
        self.self_k = [k[:, :, :n] for k in self.self_k]
        self.self_v = [v[:, :, :n] for v in self.self_v]
        return self

    def index_select(self, batch_idx: Tensor) -> "KVCache":
        """A new cache whose row ``j`` is row ``batch_idx[j]`` of this one.

        ``batch_idx``: LongTensor ``[B']`` — reorder beams, or expand each
        request into several beams (``repeat_interleave``). Cross K/V stay
        shared when the new rows are request-major groups of equal size.
        """
        idx = torch.as_tensor(batch_idx, dtype=torch.long, device=self.cross_mask.device)
        n_cross = int(self.cross_mask.shape[0])
        req = idx // self.group                                             # cross row of each new row
        n_new = int(idx.shape[0])
        g = n_new // n_cross if n_cross and n_new % n_cross == 0 else 0
        if g and torch.equal(req, torch.arange(n_cross, device=idx.device).repeat_interleave(g)):
            cross_k, cross_v, cross_mask, group = self.cross_k, self.cross_v, self.cross_mask, g
        else:
            cross_k = [k.index_select(0, req) for k in self.cross_k]
            cross_v = [v.index_select(0, req) for v in self.cross_v]
            cross_mask, group = self.cross_mask.index_select(0, req), 1
        return KVCache(cross_k=list(cross_k), cross_v=list(cross_v), cross_mask=cross_mask,
                       self_k=[k.index_select(0, idx) for k in self.self_k],
                       self_v=[v.index_select(0, idx) for v in self.self_v], group=group,
                       self_pad=None if self.self_pad is None else self.self_pad.index_select(0, idx))

    def ungrouped(self) -> "KVCache":
        """The same cache with one cross row per decoder row (materialised copy)."""
        if self.group == 1:
            return self
        req = torch.arange(self.batch_size, device=self.cross_mask.device) // self.group
        return KVCache([k.index_select(0, req) for k in self.cross_k], [v.index_select(0, req) for v in self.cross_v],
                       self.cross_mask.index_select(0, req), list(self.self_k), list(self.self_v), 1, self.self_pad)

    def clone(self) -> "KVCache":
        """An independent copy (tensors are shared until one side appends; append never mutates)."""
        return KVCache(list(self.cross_k), list(self.cross_v), self.cross_mask,
                       list(self.self_k), list(self.self_v), self.group, self.self_pad)

    # ---- continuous batching ---------------------------------------------------------------

    def pads(self) -> Tensor:
        """``[B]`` leading padding columns per row (zeros when the cache is not ragged)."""
        if self.self_pad is not None:
            return self.self_pad
        return torch.zeros(self.batch_size, dtype=torch.long, device=self.cross_mask.device)

    @staticmethod
    def concat_rows(a: "KVCache", b: "KVCache") -> "KVCache":
        """One cache holding the rows of ``a`` then those of ``b`` (ragged; see module docstring).

        Self-attention K/V are left-padded to the longer length (``self_pad``
        grows by the padding added); cross-attention K/V are right-padded to the
        longer memory, the padding masked out of ``cross_mask``.
        """
        if a.num_layers != b.num_layers:
            raise ValueError(f"caches of {a.num_layers} and {b.num_layers} layers cannot be merged")
        a, b = a.ungrouped(), b.ungrouped()
        t = max(a.length, b.length)
        s = max(int(a.cross_mask.shape[1]), int(b.cross_mask.shape[1]))

        def left(x: Tensor, n: int) -> Tensor:      # [B, H, T, Dh] -> [B, H, T + n, Dh]
            return x if n == 0 else torch.nn.functional.pad(x, (0, 0, n, 0))

        def right(x: Tensor, n: int) -> Tensor:     # [B, H, S, Dh] -> [B, H, S + n, Dh]
            return x if n == 0 else torch.nn.functional.pad(x, (0, 0, 0, n))

        pa, pb = t - a.length, t - b.length
        sa, sb = s - int(a.cross_mask.shape[1]), s - int(b.cross_mask.shape[1])
        cat = torch.cat
        return KVCache(
            cross_k=[cat([right(x, sa), right(y, sb)]) for x, y in zip(a.cross_k, b.cross_k)],
            cross_v=[cat([right(x, sa), right(y, sb)]) for x, y in zip(a.cross_v, b.cross_v)],
            cross_mask=cat([torch.nn.functional.pad(a.cross_mask, (0, sa), value=False),
                            torch.nn.functional.pad(b.cross_mask, (0, sb), value=False)]),
            self_k=[cat([left(x, pa), left(y, pb)]) for x, y in zip(a.self_k, b.self_k)],
            self_v=[cat([left(x, pa), left(y, pb)]) for x, y in zip(a.self_v, b.self_v)],
            self_pad=cat([a.pads() + pa, b.pads() + pb]))

    def trim(self) -> "KVCache":
        """Drop the leading self columns every row pads and the trailing memory columns no row uses.

        After rows have left a continuous batch, the rest may not need the longest
        rows' columns any more; attention cost follows the trimmed sizes. Returns self.
        """
        if self.self_pad is not None and self.batch_size:
            cut = int(self.self_pad.min())
            if cut:
                self.self_k = [k[:, :, cut:] for k in self.self_k]
                self.self_v = [v[:, :, cut:] for v in self.self_v]
                self.self_pad = self.self_pad - cut
        used = self.cross_mask.any(0).nonzero()
        keep = int(used.max()) + 1 if used.numel() else 0
        if self.cross_mask.shape[0] and keep < int(self.cross_mask.shape[1]):
            self.cross_k = [k[:, :, :keep] for k in self.cross_k]
            self.cross_v = [v[:, :, :keep] for v in self.cross_v]
            self.cross_mask = self.cross_mask[:, :keep]
        return self
