"""Session decoding: the catalog constraint engine, search loops, speculative roles, continuous batching, ``generate()``."""
