"""Base models: loading any Hugging Face causal LM from a path, the built-in ``tiny`` model (shipped
with fedprag), and batched greedy generation."""
