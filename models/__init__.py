"""Pure PyTorch/NumPy models: no files, sockets, Kafka, Ray or environment reads.

* :mod:`models.sid` — semantic IDs: item embeddings, RQ-KMeans / RQ-VAE tokenizers, de-duplication,
  the prefix trie and the catalog (item id ↔ index ↔ SID, faiss).
* :mod:`models.text` — the sentence encoder forward used for item text.
* :mod:`models.generator` — the encoder–decoder generator, its features, sessions, MTP heads, training.
* :mod:`models.decoding` — the one constraint engine and every decoding mode behind ``generate()``.
* :mod:`models.baselines` — SASRec and popularity.
* :mod:`models.evaluation` — splits, ranking metrics, the ``Ranker`` protocol, training budgets.
"""
