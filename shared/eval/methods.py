"""The methods the harness compares, each as ``encode`` once, then ``inputs`` per batch of questions.

A method turns a batch of questions (with their retrieved passages) into prompts plus an optional
per-request adapter; the harness does the rest identically for all of them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from shared import prompts
from shared.data.augment import augmentation_for
from shared.data.schema import Dataset
from shared.lora.layers import Adapter, LoRALinear
from shared.methods.prag import PRAGAdapters, PRAGConfig
from shared.methods.prag import serializer as prag_serializer
from shared.methods.prag.trainer import encode_passages
from shared.models.loading import BaseModel


@dataclass
class EncodingCost:
    """What encoding the corpus cost: wall seconds per passage and stored bytes."""

    seconds_per_passage: float = 0.0
    stored_bytes: int = 0


@dataclass
class EvalContext:
    """Everything the methods share: data, base model, retrieval results, a work directory."""

    dataset: Dataset
    base: BaseModel
    layers: dict[str, LoRALinear]
    retrieved: list[list[int]]  # top-k passage rows per question
    work_dir: Path
    show_progress: bool = True
    encodings: dict[str, object] = field(default_factory=dict)

    def question_texts(self, rows: list[int]) -> list[str]:
        return [self.dataset.questions[r].text for r in rows]

    def passage_texts(self, passage_rows: list[int]) -> list[str]:
        return [self.dataset.passages[p].text for p in passage_rows]


class Method(Protocol):
    name: str

    def encode(self, ctx: EvalContext) -> EncodingCost: ...

    def inputs(self, ctx: EvalContext, question_rows: list[int], retrieved: list[list[int]]) -> tuple[list[str], Adapter | None]: ...


class ClosedBook:
    """The bare base model, no retrieval: the floor every method must beat."""

    name = "closed_book"

    def encode(self, ctx: EvalContext) -> EncodingCost:
        return EncodingCost()

    def inputs(self, ctx: EvalContext, question_rows: list[int], retrieved: list[list[int]]) -> tuple[list[str], Adapter | None]:
        return [prompts.closed_book(q) for q in ctx.question_texts(question_rows)], None


class StandardRAG:
    """The top-k passages in context: the ceiling parametric methods aim for."""

    name = "standard_rag"

    def encode(self, ctx: EvalContext) -> EncodingCost:
        return EncodingCost()

    def inputs(self, ctx: EvalContext, question_rows: list[int], retrieved: list[list[int]]) -> tuple[list[str], Adapter | None]:
        texts = ctx.question_texts(question_rows)
        return [prompts.with_context(ctx.passage_texts(r), q) for q, r in zip(texts, retrieved)], None


class PRAG:
    """One LoRA per passage, top-k summed; ``combine`` also puts the passages in context."""

    def __init__(self, config: PRAGConfig, combine: bool = False):
        self.config = config
        self.combine = combine
        self.name = "prag_combine" if combine else "prag"

    def encode(self, ctx: EvalContext) -> EncodingCost:
        if "prag" not in ctx.encodings:
            passages = ctx.dataset.passages
            augmentations = {p.passage_id: augmentation_for(ctx.dataset, p) for p in passages}
            started = time.perf_counter()
            adapters = encode_passages(ctx.base, ctx.layers, passages, augmentations, self.config, ctx.show_progress)
            seconds = (time.perf_counter() - started) / len(passages)
            stored = prag_serializer.save(ctx.work_dir / "prag", adapters, self.config, ctx.base.digest)
            ctx.encodings["prag"] = (prag_serializer.load(ctx.work_dir / "prag", ctx.base.digest),
                                     EncodingCost(seconds, stored))
        return ctx.encodings["prag"][1]

    def inputs(self, ctx: EvalContext, question_rows: list[int], retrieved: list[list[int]]) -> tuple[list[str], Adapter | None]:
        adapters: PRAGAdapters = ctx.encodings["prag"][0]
        adapter = adapters.summed(torch.tensor(retrieved, dtype=torch.long))
        texts = ctx.question_texts(question_rows)
        if self.combine:
            return [prompts.with_context(ctx.passage_texts(r), q) for q, r in zip(texts, retrieved)], adapter
        return [prompts.closed_book(q) for q in texts], adapter


def build_methods(names: list[str], prag: PRAGConfig) -> list[Method]:
    """Instantiate methods by name, with an error that lists the known names."""
    factories = {
        "closed_book": ClosedBook,
        "standard_rag": StandardRAG,
        "prag": lambda: PRAG(prag),
        "prag_combine": lambda: PRAG(prag, combine=True),
    }
    unknown = [n for n in names if n not in factories]
    if unknown:
        raise ValueError(f"eval.methods: unknown {unknown} (known: {', '.join(factories)})")
    return [factories[n]() for n in names]
