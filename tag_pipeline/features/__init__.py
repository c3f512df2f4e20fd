"""Node features: TA and E text embeddings (frozen LM) and the P top-k prediction matrix."""
