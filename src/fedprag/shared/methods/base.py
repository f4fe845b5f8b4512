"""What every encoding method shares, as PEFT's tuners share their base classes.

A method's folder holds the same five roles:

* ``config``: its hyper-parameters, a :class:`~fedprag.shared.methods.config.MethodConfig`;
* ``layers``: its tensors as modules (stored LoRAs, an expert pool, a generator);
* ``trainer``: encoding passages into those tensors;
* ``serializer``: safetensors plus a manifest, bound to the base model;
* ``model``: the inference role, a :class:`MethodModel` that turns each query's :class:`Routing`
  into a prompt and a per-request adapter, plus ``encode_corpus``, which encodes a
  :class:`Corpus` and returns that model.

:class:`fedprag.shared.query.QueryEngine` answers with any ``MethodModel``; the registry in
:mod:`fedprag.shared.methods` names the methods.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import Tensor

from fedprag.shared import prompts
from fedprag.shared.data.schema import Augmentation, Passage
from fedprag.shared.lora.layers import Adapter, LoRALinear
from fedprag.shared.models.loading import BaseModel


@dataclass(frozen=True)
class Routing:
    """What one query brings to a method's model.

    * ``passage_ids`` and ``scores``: the passages retrieved for it, best first (PRAG and
      Poly-PRAG look their stored encodings up by id);
    * ``documents``: those passages' text, present only where text may be: at the site that holds
      it, or in a single-machine evaluation (standard RAG and DistilledPRAG read it);
    * ``embedding``: the query's retrieval embedding (the learned query router reads it);
    * ``weights``: Poly-PRAG expert weights ``[G, K]`` already blended from the sites' routing
      replies (federated serving), so no passage id is needed;
    * ``factors`` and ``lengths``: DistilledPRAG in federated serving, the LoRA factors each
      contributing site generated from its passages (wire form), best site first, and per site
      those passages' token counts, best first (the prompt holds that many mask tokens per passage).
    """

    passage_ids: tuple[str, ...] = ()
    scores: tuple[float, ...] = ()
    documents: tuple[str, ...] = ()
    embedding: np.ndarray | None = None
    weights: Tensor | None = None
    factors: tuple[Mapping[str, np.ndarray], ...] = ()
    lengths: tuple[tuple[int, ...], ...] = ()


class MethodModel(ABC):
    """A method's inference role: for a batch of queries, their prompts and one batched adapter."""

    name: str

    def prompts(self, questions: Sequence[str], routings: Sequence[Routing]) -> list[str]:
        """Closed-book prompts unless overridden: the knowledge is in the adapter, not the prompt."""
        return [prompts.closed_book(q) for q in questions]

    @abstractmethod
    def adapter(self, routings: Sequence[Routing]) -> Adapter | None:
        """Per-request low-rank factors for the batch, row ``i`` for ``routings[i]``; ``None``
        answers with the bare base model."""


@dataclass(frozen=True)
class EncodingCost:
    """What encoding a corpus cost: wall seconds per passage and stored bytes."""

    seconds_per_passage: float = 0.0
    stored_bytes: int = 0


@dataclass
class Corpus:
    """What encoding a corpus needs: the base model and its adapted layers, the passages and their
    augmentations, the query encoder, and a work directory for the stored encodings.

    ``encodings`` holds what a method already encoded, so its variants (PRAG and PRAG-combine,
    say) share one encoding.
    """

    base: BaseModel
    layers: dict[str, LoRALinear]
    passages: list[Passage]
    augmentations: dict[str, Augmentation]
    embed: Callable[[list[str]], np.ndarray]
    work_dir: Path
    show_progress: bool = True
    encodings: dict[str, object] = field(default_factory=dict)
