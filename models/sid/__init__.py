"""Semantic IDs: item embeddings, tokenizers (RQ-KMeans, RQ-VAE), de-duplication, the SID trie, the catalog."""
