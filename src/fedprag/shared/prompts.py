"""The prompt formats the built-in model is pretrained on and every method is evaluated with.

One module owns them so that pretraining, encoding and evaluation can never drift apart.

With passages in context the question comes first, so that the model knows what it is looking
for while it reads. Measured on the built-in 4-layer model (2 cores, single passage, reading
only, 2,000 steps): question first, 0.94 exact match on never-seen people; passages first, 0.65,
with the mentor (a name among other names) never learned.
"""

from __future__ import annotations

from collections.abc import Sequence

ANSWER_CUE = "\nAnswer:"


def closed_book(question: str) -> str:
    """A question with nothing in context."""
    return f"Question: {question}{ANSWER_CUE}"


def context_header(question: str) -> str:
    """What precedes the passages in a prompt with context: the question, then the context label."""
    return f"Question: {question}\nContext:\n"


def with_context(passages: Sequence[str], question: str) -> str:
    """Standard RAG: the question, the passages one per line, then the answer cue."""
    return context_header(question) + "\n".join(passages) + ANSWER_CUE


def completion(answer: str) -> str:
    """The text a prompt is completed with; generation stops at the end-of-text token."""
    return f" {answer}"


REWRITE_CUE = "\nRewrite:"


def augment_request(passage: str) -> str:
    """What the built-in model is asked to write its own encoding data from: one passage, then a cue
    for a rewrite of it followed by question and answer lines (see :func:`augment_completion`)."""
    return f"Passage: {passage}\nWrite a rewrite and questions.{REWRITE_CUE}"


def augment_completion(rewrite: str, qa: Sequence[tuple[str, str]]) -> str:
    """The text :func:`augment_request` is completed with: the rewrite, then ``Q:``/``A:`` lines."""
    return f" {rewrite}" + "".join(f"\nQ: {q}\nA: {a}" for q, a in qa) + "\n"
