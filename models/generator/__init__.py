"""The generator: encoder–decoder over SID tokens, its input features, training sessions, MTP heads, training."""
