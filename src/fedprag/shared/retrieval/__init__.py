"""Dense retrieval: all-MiniLM-L6-v2 embeddings (offline, from its PyPI package) and faiss."""
