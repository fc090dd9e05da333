"""A lean BERT encoder forward over *packed* (unpadded) tokens, for sentence embeddings on CPU.

BERT (Devlin et al. 2019) as used by all-MiniLM-L6-v2 (Wang et al. 2020,
MiniLM; Reimers & Gurevych 2019, Sentence-BERT): token + position + segment
embeddings → LayerNorm, then L post-LN layers of multi-head self-attention and
a GELU feed-forward, then mean pooling over real tokens and L2 normalisation.

Why not ``transformers.BertModel`` on the item indexer's hot path: new items
arrive a few at a time (a micro-batch at 100 items/s holds 2-30 texts), and
there the Hugging Face forward spends most of its time outside the matrix
products (mask building, attention dispatch, per-module Python, output
objects), and every padded position costs a full row in every GEMM. Here:

* the tokens of all texts are *packed* into one [N, D] matrix, so every
  Linear and LayerNorm sees real tokens only (no padding compute); only the
  attention scores need the [B, H, T, T] layout, reached by one index copy;
* Q, K and V are one fused Linear ([3D, D]): one GEMM instead of three;
* a handful of tensor ops per layer, no mask objects or output dataclasses.

The result equals ``BertModel`` + mean pooling to float rounding (~1e-6; the
tests compare it with sentence-transformers). Every ``nn.Linear`` stays an
``nn.Linear`` so ``torch.ao.quantization.quantize_dynamic`` can still swap in
int8 kernels. Pure torch (no file or network access): the caller hands in the
``BertModel`` whose weights it copies.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class _Layer(nn.Module):
    def __init__(self, d: int, heads: int, ff: int, eps: float):
        super().__init__()
        self.heads, self.eps = heads, eps
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.ln1 = nn.LayerNorm(d, eps=eps)
        self.ff1 = nn.Linear(d, ff)
        self.ff2 = nn.Linear(ff, d)
        self.ln2 = nn.LayerNorm(d, eps=eps)

    def forward(self, x: torch.Tensor, scatter: torch.Tensor, b: int, t: int,
                key_mask: torch.Tensor) -> torch.Tensor:
        """x [N, D] packed tokens; scatter [N] = row in the padded [B*T] layout; key_mask [B, 1, 1, T] bool."""
        n, d = x.shape
        h = self.heads
        qkv = self.qkv(x)                                                     # [N, 3D]
        pad = qkv.new_zeros((b * t, 3 * d))
        pad[scatter] = qkv
        q, k, v = pad.view(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)         # each [B, H, T, D/H]
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)        # [B, H, T, D/H]
        a = a.transpose(1, 2).reshape(b * t, d)[scatter]                       # [N, D]
        x = F.layer_norm(x + self.out(a), (d,), self.ln1.weight, self.ln1.bias, self.eps)
        f = self.ff2(F.gelu(self.ff1(x)))                                      # [N, D]
        return F.layer_norm(x + f, (d,), self.ln2.weight, self.ln2.bias, self.eps)


class PackedBert(nn.Module):
    """Mean-pooled, L2-normalised BERT sentence embeddings from packed token ids.

    Built from a ``transformers`` ``BertModel`` (absolute positions, GELU,
    post-LN) with :meth:`from_bert`; call :meth:`embed` with a list of token-id
    lists (each already with [CLS]/[SEP] and within the position table).
    """

    def __init__(self, vocab: int, max_pos: int, d: int, heads: int, ff: int, layers: int, eps: float):
        super().__init__()
        if d % heads:
            raise ValueError(f"PackedBert: hidden size {d} is not a multiple of {heads} heads")
        self.d, self.eps, self.max_pos = d, eps, max_pos
        self.word = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(max_pos, d)
        self.register_buffer("seg0", torch.zeros(d))                          # segment 0 embedding [D]
        self.ln = nn.LayerNorm(d, eps=eps)
        self.layers = nn.ModuleList(_Layer(d, heads, ff, eps) for _ in range(layers))

    @classmethod
    def from_bert(cls, bert: nn.Module) -> "PackedBert":
        """Copy the weights of a ``transformers.BertModel`` (refuses configurations this forward does not do)."""
        c = bert.config
        if c.hidden_act != "gelu" or getattr(c, "position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"PackedBert implements GELU + absolute positions, not hidden_act={c.hidden_act!r} / "
                             f"position_embedding_type={getattr(c, 'position_embedding_type', None)!r}")
        m = cls(c.vocab_size, c.max_position_embeddings, c.hidden_size, c.num_attention_heads,
                c.intermediate_size, c.num_hidden_layers, c.layer_norm_eps)
        e = bert.embeddings
        with torch.no_grad():
            m.word.weight.copy_(e.word_embeddings.weight)
            m.pos.weight.copy_(e.position_embeddings.weight)
            m.seg0.copy_(e.token_type_embeddings.weight[0])
            m.ln.load_state_dict(e.LayerNorm.state_dict())
            for mine, theirs in zip(m.layers, bert.encoder.layer):
                s = theirs.attention.self
                mine.qkv.weight.copy_(torch.cat([s.query.weight, s.key.weight, s.value.weight]))
                mine.qkv.bias.copy_(torch.cat([s.query.bias, s.key.bias, s.value.bias]))
                mine.out.load_state_dict(theirs.attention.output.dense.state_dict())
                mine.ln1.load_state_dict(theirs.attention.output.LayerNorm.state_dict())
                mine.ff1.load_state_dict(theirs.intermediate.dense.state_dict())
                mine.ff2.load_state_dict(theirs.output.dense.state_dict())
                mine.ln2.load_state_dict(theirs.output.LayerNorm.state_dict())
        return m.eval()

    def embed(self, ids: list[list[int]]) -> torch.Tensor:
        """Token ids of B texts (ragged) -> unit-norm mean-pooled embeddings [B, D]."""
        dev = self.word.weight.device
        lengths = torch.tensor([len(x) for x in ids], dtype=torch.int64)                 # [B]
        if int(lengths.min()) < 1 or int(lengths.max()) > self.max_pos:
            raise ValueError(f"PackedBert.embed: texts must have 1..{self.max_pos} tokens, "
                             f"got {int(lengths.min())}..{int(lengths.max())}")
        b, t = len(ids), int(lengths.max())
        flat = torch.tensor([i for x in ids for i in x], dtype=torch.int64, device=dev)   # [N]
        seg = torch.repeat_interleave(torch.arange(b), lengths)                         # [N] text of each token
        starts = torch.cumsum(lengths, 0) - lengths                                     # [B]
        pos = torch.arange(flat.numel()) - starts[seg]                                  # [N] position in its text
        scatter = (seg * t + pos).to(dev)                                               # [N] row in [B*T]
        key_mask = (torch.arange(t)[None, :] < lengths[:, None]).to(dev)[:, None, None, :]   # [B, 1, 1, T]
        x = self.word(flat) + self.pos(pos.to(dev)) + self.seg0                         # [N, D]
        x = F.layer_norm(x, (self.d,), self.ln.weight, self.ln.bias, self.eps)
        for layer in self.layers:
            x = layer(x, scatter, b, t, key_mask)
        seg = seg.to(dev)
        pooled = x.new_zeros((b, self.d)).index_add_(0, seg, x) / lengths.to(dev, x.dtype)[:, None]   # [B, D]
        return F.normalize(pooled, p=2, dim=1)
