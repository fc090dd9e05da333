"""PackedBert: the packed (unpadded) BERT forward equals transformers' BertModel + mean pooling."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from models.text.packed_bert import PackedBert


def _tiny_bert(seed: int = 0, act: str = "gelu"):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=50, hidden_size=24, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=40, max_position_embeddings=16, hidden_act=act)
    bert = BertModel(cfg).eval()
    with torch.no_grad():                 # non-trivial segment-0 embedding and LayerNorm parameters
        for p in bert.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return bert


def _reference(bert, ids: list[list[int]]) -> torch.Tensor:
    t = max(map(len, ids))
    tok = torch.zeros((len(ids), t), dtype=torch.int64)
    mask = torch.zeros((len(ids), t), dtype=torch.int64)
    for i, x in enumerate(ids):
        tok[i, :len(x)] = torch.tensor(x)
        mask[i, :len(x)] = 1
    h = bert(input_ids=tok, attention_mask=mask, token_type_ids=torch.zeros_like(tok)).last_hidden_state
    m = mask.unsqueeze(-1).float()
    return F.normalize((h * m).sum(1) / m.sum(1), dim=1)


def test_packed_forward_equals_padded_bert_on_ragged_texts():
    bert = _tiny_bert()
    packed = PackedBert.from_bert(bert)
    g = torch.Generator().manual_seed(1)
    ids = [torch.randint(1, 50, (n,), generator=g).tolist() for n in (1, 7, 16, 3, 9)]
    with torch.inference_mode():
        got = packed.embed(ids)
        want = _reference(bert, ids)
        assert got.shape == (5, 24)
        torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
        # an embedding depends on its own text only (no leakage through padding or neighbours)
        torch.testing.assert_close(packed.embed(ids[1:2])[0], got[1], atol=2e-6, rtol=1e-5)


def test_refuses_what_it_does_not_implement():
    with pytest.raises(ValueError, match="hidden_act"):
        PackedBert.from_bert(_tiny_bert(act="relu"))
    packed = PackedBert.from_bert(_tiny_bert())
    with pytest.raises(ValueError, match="1..16 tokens"):
        packed.embed([list(range(1, 20))])
