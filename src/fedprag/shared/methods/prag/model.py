"""PRAG at query time: the retrieved passages' LoRAs summed into one adapter per request.

With ``combine`` (PRAG-combine) the passages are also put in the prompt, which is only possible
where their text is.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from fedprag.shared import prompts
from fedprag.shared.lora.layers import Adapter
from fedprag.shared.methods.base import Corpus, EncodingCost, MethodModel, Routing
from fedprag.shared.methods.prag import serializer
from fedprag.shared.methods.prag.config import PRAGConfig
from fedprag.shared.methods.prag.layers import PRAGAdapters
from fedprag.shared.methods.prag.trainer import encode_passages

CONFIG = PRAGConfig
VARIANTS = ("prag", "prag_combine")


class PRAGModel(MethodModel):
    """Every passage's stored LoRA; a request gets the sum of its retrieved passages' LoRAs."""

    def __init__(self, adapters: PRAGAdapters, combine: bool = False):
        self.adapters = adapters
        self.combine = combine
        self.name = "prag_combine" if combine else "prag"

    def prompts(self, questions: Sequence[str], routings: Sequence[Routing]) -> list[str]:
        if self.combine:
            return [prompts.with_context(list(r.documents), q) for q, r in zip(questions, routings)]
        return super().prompts(questions, routings)

    def adapter(self, routings: Sequence[Routing]) -> Adapter | None:
        rows = torch.tensor([self.adapters.rows(list(r.passage_ids)) for r in routings], dtype=torch.long)
        return self.adapters.summed(rows)


def encode_corpus(corpus: Corpus, config: PRAGConfig, variant: str = "prag") -> tuple[PRAGModel, EncodingCost]:
    """Train one LoRA per passage (once per corpus), store and reload them, as a site would."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown PRAG variant '{variant}' (known: {', '.join(VARIANTS)})")
    if "prag" not in corpus.encodings:
        started = time.perf_counter()
        adapters = encode_passages(corpus.base, corpus.layers, corpus.passages, corpus.augmentations, config,
                                   corpus.show_progress)
        seconds = (time.perf_counter() - started) / len(corpus.passages)
        stored = serializer.save(corpus.work_dir / "prag", adapters, config, corpus.base.digest)
        corpus.encodings["prag"] = (serializer.load(corpus.work_dir / "prag", corpus.base.digest),
                                    EncodingCost(seconds, stored))
    adapters, cost = corpus.encodings["prag"]
    return PRAGModel(adapters, combine=variant == "prag_combine"), cost
