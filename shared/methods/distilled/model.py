"""DistilledPRAG at query time: the generator turns each request's documents into its LoRA, and the
prompt holds mask tokens where the documents were (docs/design.md §2.3).

The generator runs where the documents are: at the site that holds them, or in a single-machine
evaluation. Encoding a passage is one generator forward, with no training.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from fedprag.shared.io import dir_bytes
from fedprag.shared.lora.layers import Adapter
from fedprag.shared.methods.base import Corpus, EncodingCost, MethodModel, Routing
from fedprag.shared.methods.distilled import serializer
from fedprag.shared.methods.distilled.config import DistilledConfig
from fedprag.shared.methods.distilled.trainer import DistilledEncoder

CONFIG = DistilledConfig
VARIANTS = ("distilled", "distilled_top1", "distilled_irrelevant")
# The ablation that checks the LoRA depends on its documents: the harness hands it passages that
# are neither retrieved nor gold, so exact match should fall to closed-book.
SWAPPED_PASSAGES = ("distilled_irrelevant",)


class DistilledModel(MethodModel):
    """The generator bound to its base model; ``passages`` keeps only the best that many documents."""

    def __init__(self, encoder: DistilledEncoder, passages: int | None = None, name: str = "distilled"):
        self.encoder, self.passages, self.name = encoder, passages, name

    def _documents(self, routing: Routing) -> list[str]:
        return list(routing.documents[:self.passages])

    def prompts(self, questions: Sequence[str], routings: Sequence[Routing]) -> list[str]:
        return [self.encoder.masked_prompt(self._documents(r), q) for q, r in zip(questions, routings)]

    def adapter(self, routings: Sequence[Routing]) -> Adapter | None:
        with torch.no_grad():
            return self.encoder.adapters([self._documents(r) for r in routings])


def encode_corpus(corpus: Corpus, config: DistilledConfig,
                  variant: str = "distilled") -> tuple[DistilledModel, EncodingCost]:
    """The generator for this base model (distilled once on synthetic documents about other people
    and cached under ``$FEDPRAG_HOME/generators``, so every corpus passage is one it never saw),
    and the cost of encoding the corpus with it: one generator forward per passage."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown DistilledPRAG variant '{variant}' (known: {', '.join(VARIANTS)})")
    if "distilled" not in corpus.encodings:
        encoder, path = serializer.cached_generator(corpus.base, corpus.layers, config, corpus.show_progress)
        texts = [p.text for p in corpus.passages]
        encoder.encode(texts[:16])  # warm-up: one-time allocations, not per-passage cost
        started = time.perf_counter()
        encoder.encode(texts)
        seconds = (time.perf_counter() - started) / len(texts)
        stored = dir_bytes(path)
        corpus.encodings["distilled"] = (encoder, EncodingCost(seconds, stored))
    encoder, cost = corpus.encodings["distilled"]
    return DistilledModel(encoder, passages=1 if variant == "distilled_top1" else None, name=variant), cost
