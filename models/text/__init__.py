"""Item text: a lean packed BERT forward for sentence embeddings (all-MiniLM-L6-v2)."""
