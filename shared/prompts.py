"""The prompt formats the built-in model is pretrained on and every method is evaluated with.

One module owns them so that pretraining, encoding and evaluation can never drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence


def closed_book(question: str) -> str:
    """A question with nothing in context."""
    return f"Question: {question}\nAnswer:"


def with_context(passages: Sequence[str], question: str) -> str:
    """Standard RAG: the passages, one per line, then the question."""
    context = "\n".join(passages)
    return f"Context:\n{context}\n{closed_book(question)}"


def completion(answer: str) -> str:
    """The text a prompt is completed with; generation stops at the end-of-text token."""
    return f" {answer}"
