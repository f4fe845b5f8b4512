"""What loading a base model can fail with (no torch here: the CLI catches it without loading one)."""


class ModelLoadError(ValueError):
    """The model path is missing, not a causal LM checkpoint, or of an unsupported family."""
