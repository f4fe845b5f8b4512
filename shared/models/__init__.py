"""Base models: loading any Hugging Face causal LM from a path, and the built-in ``tiny`` model."""
