"""Dense retrieval: all-MiniLM-L6-v2 embeddings (offline, from its PyPI package) and faiss."""

DTYPES = ("auto", "float32", "bfloat16")
"""The question encoder's precisions (``auto``: bfloat16 where the CPU computes it natively)."""
