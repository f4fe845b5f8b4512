"""The ``[augment]`` section: who writes the encoding data of passages that came without it (the
writer is :mod:`fedprag.shared.models.augmenter`; no torch here, so the configuration loads without it)."""

from __future__ import annotations

from dataclasses import dataclass

SOURCES = ("model", "cloze")
STYLES = ("auto", "builtin", "instruct")


@dataclass(frozen=True)
class AugmentConfig:
    """How passages without the owner's own augmentation get one (the ``[augment]`` section)."""

    source: str = "model"
    """``model``: a language model writes a rewrite and QA pairs; ``cloze``: each sentence's last
    word is asked for (no model; a poor encoding, kept as an explicit choice)."""
    model: str = ""
    """The writing model (``tiny`` or a checkpoint directory); empty means the encoding model itself."""
    prompt: str = "auto"
    """``builtin`` (the built-in model's trained format), ``instruct`` (PRAG's instructions, for
    other models) or ``auto`` (builtin for a model fedprag built, instruct otherwise)."""
    views: int = 0
    """Prompts per passage, each with its sentences in another order (as written, rotated, then
    reversed and rotated); their pairs are merged. A small model loses track late in a passage,
    so another ordering asks about the facts one missed. 0: 12 for the built-in prompt, else 1."""
    pairs: int = 6
    """QA pairs kept per passage at most (and read from each prompt): one per distinct answer first."""
    grounded: bool = True
    """Keep only pairs whose answer occurs in the passage (a written answer that is not there is
    more often invented than paraphrased)."""
    max_new_tokens: int = 256
    batch_size: int = 16
    use_dataset: bool = True
    """Whether a dataset's own ``augmentations.parquet`` wins where present (off: every passage is
    written by the augmenter, as in the benchmark's model-based rows)."""

    def validate(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"augment.source: must be one of {SOURCES}, not '{self.source}'")
        if self.prompt not in STYLES:
            raise ValueError(f"augment.prompt: must be one of {STYLES}, not '{self.prompt}'")
        for name in ("pairs", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"augment.{name}: must be a positive integer")
        if self.views < 0:
            raise ValueError("augment.views: must be a positive integer, or 0 for the prompt style's default")
