"""Encoding-time augmentation of a passage: one rewrite and QA pairs (PRAG's data format).

A dataset may ship an augmenter's output in ``augmentations.parquet`` (the knowledge benchmark
does, with question templates kept apart from its test templates). For datasets without one, a
deterministic fallback derives cloze-style pairs from the passage's own sentences, so every
dataset in the schema can be encoded.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from fedprag.shared.data.schema import Augmentation, Dataset, Passage

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def cloze_augmentation(passage: Passage) -> Augmentation:
    """Rewrite = the sentences in reverse order; QA = each sentence with its last word asked for."""
    sentences = [s.strip() for s in _SENTENCE_END.split(passage.text) if s.strip()]
    qa = []
    for sentence in sentences:
        words = sentence.rstrip(".!?").split()
        if len(words) >= 2:
            qa.append((f"Complete: {' '.join(words[:-1])} ...?", words[-1]))
    while len(qa) < 3:  # very short passages: ask for the whole passage's last word repeatedly
        words = passage.text.split()
        qa.append((f"Complete: {' '.join(words[:-1]) or words[0]} ...?", words[-1].rstrip(".!?")))
    return Augmentation(passage.passage_id, " ".join(reversed(sentences)), qa)


def augmentations_of(dataset: Dataset, passages: Sequence[Passage] | None = None) -> dict[str, Augmentation]:
    """Each of ``passages`` (default: all the dataset's) by passage id: the dataset's own
    augmentation if it has one, else the cloze fallback."""
    chosen = dataset.passages if passages is None else passages
    return {p.passage_id: dataset.augmentations.get(p.passage_id) or cloze_augmentation(p) for p in chosen}
