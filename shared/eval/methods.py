"""The methods the harness compares, each as ``encode`` once, then ``inputs`` per batch of questions.

A method turns a batch of questions (with their retrieved passages) into prompts plus an optional
per-request adapter; the harness does the rest identically for all of them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from shared import prompts
from shared.data.augment import augmentations_of
from shared.data.benchmark import synthetic_population
from shared.data.schema import Augmentation, Dataset
from shared.lora.layers import Adapter, LoRALinear
from shared.methods.distilled import DistilledConfig
from shared.methods.distilled import serializer as distilled_serializer
from shared.methods.poly import PolyConfig
from shared.methods.poly import serializer as poly_serializer
from shared.methods.poly import trainer as poly_trainer
from shared.methods.poly.layers import (
    ExpertPool,
    QueryRouter,
    RoutingTable,
    combine,
    keep_top_m,
    routing_weights,
)
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
class Hits:
    """Retrieval results for a list of questions: top-k passage rows and their scores."""

    rows: list[list[int]]
    scores: list[list[float]]

    def select(self, questions: list[int]) -> Hits:
        return Hits([self.rows[q] for q in questions], [self.scores[q] for q in questions])


@dataclass
class EvalContext:
    """Everything the methods share: data, base model, retrieval results, a work directory."""

    dataset: Dataset
    base: BaseModel
    layers: dict[str, LoRALinear]
    hits: Hits  # top-k passages per question
    work_dir: Path
    embed: Callable[[list[str]], np.ndarray]  # the retrieval encoder, for methods that route on the query
    show_progress: bool = True
    encodings: dict[str, object] = field(default_factory=dict)

    def question_texts(self, rows: list[int]) -> list[str]:
        return [self.dataset.questions[r].text for r in rows]

    def passage_texts(self, passage_rows: list[int]) -> list[str]:
        return [self.dataset.passages[p].text for p in passage_rows]

    def augmentations(self) -> dict[str, Augmentation]:
        """Every passage's encoding-time augmentation (the dataset's own, else the cloze fallback)."""
        return augmentations_of(self.dataset)


class Method(Protocol):
    name: str

    def encode(self, ctx: EvalContext) -> EncodingCost: ...

    def inputs(self, ctx: EvalContext, question_rows: list[int], hits: Hits) -> tuple[list[str], Adapter | None]: ...


class ClosedBook:
    """The bare base model, no retrieval: the floor every method must beat."""

    name = "closed_book"

    def encode(self, ctx: EvalContext) -> EncodingCost:
        return EncodingCost()

    def inputs(self, ctx: EvalContext, question_rows: list[int], hits: Hits) -> tuple[list[str], Adapter | None]:
        return [prompts.closed_book(q) for q in ctx.question_texts(question_rows)], None


class StandardRAG:
    """Retrieved passages in context: the ceiling parametric methods aim for.

    By default every retrieved passage (the harness's top-k) goes in; ``passages=1`` keeps only
    the best one, which is how a reader that cannot tell passages apart should be measured.
    """

    def __init__(self, passages: int | None = None):
        self.passages = passages
        self.name = "standard_rag" if passages is None else f"standard_rag_top{passages}"

    def encode(self, ctx: EvalContext) -> EncodingCost:
        return EncodingCost()

    def inputs(self, ctx: EvalContext, question_rows: list[int], hits: Hits) -> tuple[list[str], Adapter | None]:
        texts = ctx.question_texts(question_rows)
        return [prompts.with_context(ctx.passage_texts(r[:self.passages]), q) for q, r in zip(texts, hits.rows)], None


class PRAG:
    """One LoRA per passage, top-k summed; ``combine`` also puts the passages in context."""

    def __init__(self, config: PRAGConfig, combine: bool = False):
        self.config = config
        self.combine = combine
        self.name = "prag_combine" if combine else "prag"

    def encode(self, ctx: EvalContext) -> EncodingCost:
        if "prag" not in ctx.encodings:
            passages = ctx.dataset.passages
            started = time.perf_counter()
            adapters = encode_passages(ctx.base, ctx.layers, passages, ctx.augmentations(), self.config, ctx.show_progress)
            seconds = (time.perf_counter() - started) / len(passages)
            stored = prag_serializer.save(ctx.work_dir / "prag", adapters, self.config, ctx.base.digest)
            ctx.encodings["prag"] = (prag_serializer.load(ctx.work_dir / "prag", ctx.base.digest),
                                     EncodingCost(seconds, stored))
        return ctx.encodings["prag"][1]

    def inputs(self, ctx: EvalContext, question_rows: list[int], hits: Hits) -> tuple[list[str], Adapter | None]:
        adapters: PRAGAdapters = ctx.encodings["prag"][0]
        adapter = adapters.summed(torch.tensor(hits.rows, dtype=torch.long))
        texts = ctx.question_texts(question_rows)
        if self.combine:
            return [prompts.with_context(ctx.passage_texts(r), q) for q, r in zip(texts, hits.rows)], adapter
        return [prompts.closed_book(q) for q in texts], adapter


@dataclass
class PolyEncoding:
    """A trained pool, its passages' routing (and optionally a query router), and what it cost."""

    pool: ExpertPool
    routing: RoutingTable
    cost: EncodingCost
    router: QueryRouter | None = None


class PolyPRAG:
    """Poly-PRAG: one shared expert pool; each request answers under its passages' mixture.

    Variants: ``poly`` (learned routing, combined over the top-k by score), ``poly_uniform`` (the
    ablation: pool trained and used with equal weights on every expert), ``poly_incremental``
    (pool trained on half the passages, plus ``poly.incremental_population`` synthetic people when
    set; the other half encoded routing-only against the frozen pool) and ``poly_router`` (the
    learned query router instead of per-passage routing).
    """

    VARIANTS = ("poly", "poly_uniform", "poly_incremental", "poly_router")

    def __init__(self, config: PolyConfig, variant: str = "poly"):
        if variant not in self.VARIANTS:
            raise ValueError(f"unknown Poly-PRAG variant '{variant}' (known: {', '.join(self.VARIANTS)})")
        self.config = dataclasses.replace(config, uniform=True) if variant == "poly_uniform" else config
        self.variant = variant
        self.name = variant
        self.key = "poly" if variant == "poly_router" else variant  # the router reuses poly's encoding

    def _store(self, ctx: EvalContext, key: str, pool: ExpertPool, routing: RoutingTable) -> tuple[ExpertPool, RoutingTable, int]:
        """Round-trip the encoding through disk, as a deployment would; returns it and its bytes."""
        root = ctx.work_dir / key
        stored = poly_serializer.save_pool(root / "pool", pool, self.config, ctx.base.digest)
        stored += poly_serializer.save_routing(root / "routing", routing, pool, ctx.base.digest)
        loaded, _ = poly_serializer.load_pool(root / "pool", ctx.base.digest)
        return loaded, poly_serializer.load_routing(root / "routing", loaded, ctx.base.digest), stored

    def _encode_full(self, ctx: EvalContext) -> PolyEncoding:
        passages = ctx.dataset.passages
        started = time.perf_counter()
        pool, routing, *_ = poly_trainer.train_pool(ctx.base, ctx.layers, passages, ctx.augmentations(), self.config,
                                                    ctx.show_progress)
        seconds = (time.perf_counter() - started) / len(passages)
        pool, routing, stored = self._store(ctx, self.key, pool, routing)
        return PolyEncoding(pool, routing, EncodingCost(seconds, stored))

    def _encode_incremental(self, ctx: EvalContext) -> PolyEncoding:
        passages = ctx.dataset.passages
        augmentations = ctx.augmentations()
        initial, added = passages[0::2], passages[1::2]
        fitted = initial
        if self.config.incremental_population:  # a site's existing corpus, beside the dataset's initial half
            others, other_augmentations = synthetic_population(self.config.incremental_population)
            fitted, augmentations = initial + others, {**augmentations, **other_augmentations}
        pool, routing, *_ = poly_trainer.train_pool(ctx.base, ctx.layers, fitted, augmentations, self.config, ctx.show_progress)
        routing = RoutingTable(routing.passage_ids[:len(initial)], routing.logits[:len(initial)])  # the dataset's rows
        started = time.perf_counter()
        new_rows = poly_trainer.encode_incremental(ctx.base, ctx.layers, pool, added, augmentations, self.config, ctx.show_progress)
        seconds = (time.perf_counter() - started) / len(added)
        pool, routing, stored = self._store(ctx, "poly_incremental", pool, routing.extended(new_rows))
        return PolyEncoding(pool, routing, EncodingCost(seconds, stored))

    def encode(self, ctx: EvalContext) -> EncodingCost:
        if self.key not in ctx.encodings:
            incremental = self.key == "poly_incremental"
            ctx.encodings[self.key] = self._encode_incremental(ctx) if incremental else self._encode_full(ctx)
        encoding: PolyEncoding = ctx.encodings[self.key]
        if self.variant == "poly_router" and encoding.router is None:
            encoding.router = poly_trainer.train_query_router(ctx.embed, encoding.routing, ctx.augmentations(),
                                                              seed=self.config.seed)
        return encoding.cost

    def expert_weights(self, ctx: EvalContext, question_rows: list[int], hits: Hits) -> torch.Tensor:
        """Per-request expert weights ``[b, G, K]``: the routed inference path of DESIGN.md §2.2."""
        encoding: PolyEncoding = ctx.encodings[self.key]
        pool, config = encoding.pool, self.config
        if config.uniform:
            return torch.full((len(question_rows), pool.n_groups, pool.n_experts), 1.0 / pool.n_experts)
        if encoding.router is not None:
            logits = encoding.router(torch.from_numpy(ctx.embed(ctx.question_texts(question_rows))).float())
            return keep_top_m(routing_weights(logits), config.top_m)
        ids = [[ctx.dataset.passages[r].passage_id for r in rows] for rows in hits.rows]
        weights = torch.stack([encoding.routing.weights(i) for i in ids])
        return combine(weights, torch.tensor(hits.scores), config.top_m, config.score_temperature)

    def inputs(self, ctx: EvalContext, question_rows: list[int], hits: Hits) -> tuple[list[str], Adapter | None]:
        pool = ctx.encodings[self.key].pool
        adapter = pool.adapter(self.expert_weights(ctx, question_rows, hits))
        return [prompts.closed_book(q) for q in ctx.question_texts(question_rows)], adapter


class DistilledPRAG:
    """DistilledPRAG: the generator turns the top-k passages into one LoRA, and the prompt holds
    mask tokens where the passages were (DESIGN.md §2.3).

    The generator is distilled once per base model on synthetic documents about other people
    (cached under ``$FEDPRAG_HOME/generators``), so every evaluated passage is one it never saw.
    Encoding a passage is one generator forward; the generator runs again for each query's top-k.

    ``distilled_top1`` hands the generator only the best passage. ``distilled_irrelevant`` is the
    ablation that checks the LoRA depends on its documents: the retrieved passages are swapped for
    as many others that are neither retrieved nor gold for the question, so exact match should
    fall to closed-book.
    """

    VARIANTS = ("distilled", "distilled_top1", "distilled_irrelevant")
    KEY = "distilled"  # every variant shares one generator and one encoding cost

    def __init__(self, config: DistilledConfig, variant: str = "distilled"):
        if variant not in self.VARIANTS:
            raise ValueError(f"unknown DistilledPRAG variant '{variant}' (known: {', '.join(self.VARIANTS)})")
        self.config = config
        self.name = variant
        self.passages = 1 if variant == "distilled_top1" else None
        self.irrelevant = variant == "distilled_irrelevant"

    def encode(self, ctx: EvalContext) -> EncodingCost:
        if self.KEY not in ctx.encodings:
            encoder, path = distilled_serializer.cached_generator(ctx.base, ctx.layers, self.config, ctx.show_progress)
            texts = [p.text for p in ctx.dataset.passages]
            encoder.encode(texts[:16])  # warm-up: one-time allocations, not per-passage cost
            started = time.perf_counter()
            encoder.encode(texts)
            seconds = (time.perf_counter() - started) / len(texts)
            stored = sum(f.stat().st_size for f in path.iterdir())
            ctx.encodings[self.KEY] = (encoder, EncodingCost(seconds, stored))
        return ctx.encodings[self.KEY][1]

    def inputs(self, ctx: EvalContext, question_rows: list[int], hits: Hits) -> tuple[list[str], Adapter | None]:
        encoder = ctx.encodings[self.KEY][0]
        rows = hits.rows
        if self.irrelevant:
            position = ctx.dataset.passage_index()
            rows = [_elsewhere(ctx, position, q, found) for q, found in zip(question_rows, hits.rows)]
        documents = [ctx.passage_texts(found[:self.passages]) for found in rows]
        with torch.no_grad():
            adapter = encoder.adapters(documents)
        texts = ctx.question_texts(question_rows)
        return [encoder.masked_prompt(d, q) for d, q in zip(documents, texts)], adapter


def _elsewhere(ctx: EvalContext, position: dict[str, int], question_row: int, found: list[int]) -> list[int]:
    """As many passage rows as ``found``, half the corpus away, none retrieved or gold for the question
    (``position`` maps passage ids to rows)."""
    count = len(ctx.dataset.passages)
    taken = set(found) | {position[g] for g in ctx.dataset.questions[question_row].gold_passage_ids}
    if count < len(taken) + len(found):
        raise ValueError(f"distilled_irrelevant: needs more than {len(taken) + len(found) - 1} passages, "
                         f"the dataset has {count}")
    swapped = []
    for row in found:
        other = (row + count // 2) % count
        while other in taken:
            other = (other + 1) % count
        taken.add(other)
        swapped.append(other)
    return swapped


def build_methods(names: list[str], prag: PRAGConfig, poly: PolyConfig | None = None,
                  distilled: DistilledConfig | None = None) -> list[Method]:
    """Instantiate methods by name, with an error that lists the known names."""
    factories = {
        "closed_book": ClosedBook,
        "standard_rag": StandardRAG,
        "standard_rag_top1": lambda: StandardRAG(passages=1),
        "prag": lambda: PRAG(prag),
        "prag_combine": lambda: PRAG(prag, combine=True),
        **{variant: (lambda v=variant: PolyPRAG(poly or PolyConfig(), v)) for variant in PolyPRAG.VARIANTS},
        **{variant: (lambda v=variant: DistilledPRAG(distilled or DistilledConfig(), v))
           for variant in DistilledPRAG.VARIANTS},
    }
    unknown = [n for n in names if n not in factories]
    if unknown:
        raise ValueError(f"eval.methods: unknown {unknown} (known: {', '.join(factories)})")
    return [factories[n]() for n in names]
