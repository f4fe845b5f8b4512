"""DistilledPRAG at query time: the generator turns each request's documents into its LoRA, and the
prompt holds mask tokens where the documents were (docs/design.md §2.3).

The generator runs where the documents are: at the site that holds them, or in a single-machine
evaluation. Encoding a passage is one generator forward, with no training. A distilled-mode
federation's query API holds no generator: the sites send the LoRA factors.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import Tensor

from fedprag.shared import prompts
from fedprag.shared.io import dir_bytes
from fedprag.shared.lora.layers import Adapter
from fedprag.shared.methods.base import Corpus, EncodingCost, MethodModel, Routing
from fedprag.shared.methods.distilled import serializer
from fedprag.shared.methods.distilled.config import DistilledConfig
from fedprag.shared.methods.distilled.layers import MASK_TOKEN, add_mask_token, install_mask_embedding
from fedprag.shared.methods.distilled.trainer import DistilledEncoder
from fedprag.shared.models.loading import BaseModel

CONFIG = DistilledConfig
QUESTION_ROOM = 128
"""Tokens of a served model's context kept for the question, the answer cue and the answer."""
VARIANTS = ("distilled", "distilled_top1", "distilled_irrelevant")
# The ablation that checks the LoRA depends on its documents: the harness hands it passages that
# are neither retrieved nor gold, so exact match should fall to closed-book.
SWAPPED_PASSAGES = ("distilled_irrelevant",)


class DistilledModel(MethodModel):
    """DistilledPRAG's inference role, in one of two places:

    * where the documents are (``encoder`` given: the generator bound to its base model), each
      request's documents become its LoRA here; ``passages`` keeps only the best that many;
    * at the query API of a distilled-mode federation (:meth:`served`: no generator, no
      documents), each request carries the LoRA factors the sites generated
      (``Routing.factors``, their ranks concatenated so the sites' LoRAs add up) and its
      passages' token counts (``Routing.lengths``). Sites are used best first while their mask
      tokens fit the context (``document_budget``).

    Either way the prompt is standard RAG's with one mask token per document token.
    """

    def __init__(self, encoder: DistilledEncoder | None, passages: int | None = None, name: str = "distilled",
                 document_budget: int = 0):
        self.encoder, self.passages, self.name, self.document_budget = encoder, passages, name, document_budget

    @classmethod
    def served(cls, base: BaseModel, mask_vector: Tensor, name: str = "distilled") -> DistilledModel:
        """The model at a query API: installs the mask token on ``base`` with the vector the
        federation's generator was distilled with (``GeneratorRegistry.mask_vector``); no generator
        is loaded here, and the sites' factors carry their own scale. The sites' mask tokens may
        fill the model's context but for :data:`QUESTION_ROOM` tokens."""
        install_mask_embedding(base.model, add_mask_token(base.tokenizer), mask_vector)
        return cls(None, name=name, document_budget=base.model.config.max_position_embeddings - QUESTION_ROOM)

    def _sites(self, routing: Routing) -> int:
        """How many of the routing's sites (best first) fit their mask tokens in the document
        budget; the best site always counts."""
        used, kept = 0, 0
        for lengths in routing.lengths:
            used += sum(lengths) + len(lengths)  # a separator per passage
            if kept and used > self.document_budget:
                break
            kept += 1
        return kept

    def _documents(self, routing: Routing) -> list[str]:
        return list(routing.documents[:self.passages])

    def _from_sites(self, routings: Sequence[Routing]) -> bool:
        """Whether the batch carries sites' factors (refused when only part of it does)."""
        carried = {bool(r.factors) for r in routings}
        if len(carried) > 1:
            raise ValueError("a batch mixes requests with generated factors and requests with documents")
        if carried == {False} and self.encoder is None:
            raise ValueError("this DistilledModel has no generator: requests must carry the sites' factors")
        return carried == {True}

    def prompts(self, questions: Sequence[str], routings: Sequence[Routing]) -> list[str]:
        if self._from_sites(routings):
            return [prompts.with_context([MASK_TOKEN * n for site in r.lengths[:self._sites(r)] for n in site], q)
                    for q, r in zip(questions, routings)]
        return [self.encoder.masked_prompt(self._documents(r), q) for q, r in zip(questions, routings)]

    def adapter(self, routings: Sequence[Routing]) -> Adapter | None:
        if self._from_sites(routings):
            return serializer.combined_adapter([r.factors[:self._sites(r)] for r in routings])
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
