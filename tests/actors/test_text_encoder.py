"""The in-process MiniLM encoder: same vectors as sentence-transformers, cached, int8 batch-invariant."""

from __future__ import annotations

import numpy as np
import pytest

from actors.text_encoder import TextEncoder, TextEncoderConfig, bundled_model_dir

TEXTS = ["Toy Story (1995). Animation, Children's, Comedy.", "a rocket launch to mars",
         "slow-cooked lentil soup with cumin", "jazz piano trio live at the village vanguard, 1961",
         "GoldenEye (1995). Action, Adventure, Thriller.", "x"]


@pytest.fixture(scope="module")
def fp32():
    return TextEncoder(TextEncoderConfig(device="cpu", batch_size=4))


@pytest.mark.parametrize("backend", ["packed", "hf"])
def test_matches_sentence_transformers_output(backend):
    from sentence_transformers import SentenceTransformer

    want = SentenceTransformer(bundled_model_dir(), device="cpu").encode(
        TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    got = TextEncoder(TextEncoderConfig(device="cpu", batch_size=4, backend=backend)).encode(TEXTS)
    assert got.shape == (len(TEXTS), 384) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_cache_skips_known_texts_and_duplicates(fp32):
    fp32.clear_cache()
    before = fp32.stats["encoded"]
    a = fp32.encode(TEXTS + TEXTS[:2])                  # duplicates inside one call: encoded once
    assert fp32.stats["encoded"] - before == len(TEXTS)
    hits = fp32.stats["cache_hits"]
    b = fp32.encode(TEXTS[::-1])
    assert fp32.stats["encoded"] - before == len(TEXTS) and fp32.stats["cache_hits"] - hits == len(TEXTS)
    np.testing.assert_array_equal(b, a[: len(TEXTS)][::-1])
    np.testing.assert_array_equal(a[len(TEXTS):], a[:2])


def test_max_seq_len_truncates_long_text_only(fp32):
    short = TextEncoder(TextEncoderConfig(device="cpu", max_seq_len=16, cache_size=0))
    long = "the quick brown fox jumps over the lazy dog " * 20
    assert fp32.token_lengths([long])[0] > 16
    np.testing.assert_allclose(short.encode(TEXTS[1:3]), fp32.encode(TEXTS[1:3]), atol=1e-5)   # < 16 pieces
    assert float(short.encode([long])[0] @ fp32.encode([long])[0]) < 0.9999


def test_int8_is_batch_invariant_and_close_to_fp32(fp32):
    q = TextEncoder(TextEncoderConfig(device="cpu", quantize="int8", cache_size=0))
    whole = q.encode(TEXTS)
    split = np.concatenate([q.encode(TEXTS[:1]), q.encode(TEXTS[1:4]), q.encode(TEXTS[4:])])
    np.testing.assert_array_equal(whole, split)         # an item's vector depends on its text alone
    cos = np.sum(whole * fp32.encode(TEXTS), axis=1)
    assert cos.min() > 0.9 and cos.mean() > 0.95
    assert not np.allclose(whole, fp32.encode(TEXTS), atol=1e-4)   # it really is quantised


@pytest.mark.parametrize("kw, word", [({"quantize": "fp8"}, "quantize"), ({"max_seq_len": 4}, "max_seq_len"),
                                      ({"threads": -1}, "threads"), ({"cache_size": -1}, "cache_size"),
                                      ({"backend": "onnx"}, "backend"),
                                      ({"quantize": "int8", "device": "cuda"}, "CPU only")])
def test_bad_config_is_named(kw, word):
    with pytest.raises(ValueError, match=word):
        TextEncoderConfig(**kw)


def test_int8_on_two_python_threads_gives_the_same_vectors():
    import torch

    before = torch.get_num_threads()
    one = TextEncoder(TextEncoderConfig(device="cpu", quantize="int8", cache_size=0, threads=1))
    two = TextEncoder(TextEncoderConfig(device="cpu", quantize="int8", cache_size=0, threads=2))
    np.testing.assert_array_equal(two.encode(TEXTS), one.encode(TEXTS))
    assert torch.get_num_threads() == before          # workers set their own (per-thread) intra-op threads


def test_fp32_workers_split_sub_batches_and_match_the_caller_path(fp32):
    import torch

    before = torch.get_num_threads()
    two = TextEncoder(TextEncoderConfig(device="cpu", cache_size=0, threads=2))
    texts = [f"{t} (take {k})" for k in range(3) for t in TEXTS]          # 18 texts -> 2 sub-batches of 9
    got = two.encode(texts)
    assert two.stats["forwards"] == 2 and two.stats["encoded"] == len(texts)
    np.testing.assert_allclose(got, fp32.encode(texts), atol=1e-5)
    assert torch.get_num_threads() == before
    two.encode([f"{t} (again)" for t in TEXTS[:5]] + ["four more", "short texts", "to split", "in two"])
    assert two.stats["forwards"] == 4                                       # 9 texts: one sub-batch per worker
    small = two.encode(["just one text", "and a second"])                   # too few to split: one forward
    assert two.stats["forwards"] == 5 and small.shape == (2, 384)
