"""The two baselines every parametric method is measured against, as :class:`MethodModel`\\ s.

Closed-book is the floor (the bare base model, nothing retrieved); standard RAG is the ceiling
parametric methods aim for (the retrieved passages in context). Neither has an adapter, so both
run on the same query engine as the parametric methods.
"""

from __future__ import annotations

from collections.abc import Sequence

from fedprag.shared import prompts
from fedprag.shared.lora.layers import Adapter
from fedprag.shared.methods.base import MethodModel, Routing


class ClosedBookModel(MethodModel):
    """The bare base model: the question alone."""

    name = "closed_book"

    def adapter(self, routings: Sequence[Routing]) -> Adapter | None:
        return None


class StandardRAGModel(MethodModel):
    """The question followed by its retrieved passages; ``passages`` keeps only the best that many
    (a reader that cannot tell passages apart is measured with one)."""

    def __init__(self, passages: int | None = None):
        self.passages = passages
        self.name = "standard_rag" if passages is None else f"standard_rag_top{passages}"

    def prompts(self, questions: Sequence[str], routings: Sequence[Routing]) -> list[str]:
        return [prompts.with_context(list(r.documents[:self.passages]), q) for q, r in zip(questions, routings)]

    def adapter(self, routings: Sequence[Routing]) -> Adapter | None:
        return None
