"""What the harness compares, wired in from the method registry.

An evaluated method is a :class:`~fedprag.shared.methods.base.MethodModel` plus where each
question's :class:`~fedprag.shared.methods.base.Routing` comes from: the harness's own retrieval
(the baselines and every registered method), or a routing function such as a federation's fan-out
(:class:`Routed`). The harness answers them all the same way, through the query engine, except a
method answered by a service (:class:`Served`, the query API over HTTP).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from fedprag.shared.data.augment import Augmenter, dataset_augmentations
from fedprag.shared.data.schema import Augmentation, Dataset
from fedprag.shared.lora.layers import LoRALinear
from fedprag.shared.methods import REGISTRY, method_model, method_of
from fedprag.shared.methods.base import Corpus, EncodingCost, MethodModel, Routing
from fedprag.shared.methods.baselines import ClosedBookModel, StandardRAGModel
from fedprag.shared.methods.config import MethodConfig
from fedprag.shared.models.loading import BaseModel


@dataclass
class Hits:
    """Retrieval results for a list of questions: top-k passage rows, their scores, and the
    questions' embeddings."""

    rows: list[list[int]]
    scores: list[list[float]]
    embeddings: np.ndarray | None = None

    def select(self, questions: list[int]) -> Hits:
        embeddings = None if self.embeddings is None else self.embeddings[questions]
        return Hits([self.rows[q] for q in questions], [self.scores[q] for q in questions], embeddings)


@dataclass
class EvalContext:
    """Everything the methods share: data, base model, retrieval results, where each passage's
    augmentation comes from, a work directory.

    The methods encode with the dataset's own augmentation where it has one, else with what
    ``augment`` writes (only once a method needs it); the ``*_oracle`` variants encode with
    ``oracle``, the dataset's own augmentation file, instead.
    """

    dataset: Dataset
    base: BaseModel
    layers: dict[str, LoRALinear]
    hits: Hits  # top-k passages per question
    work_dir: Path
    embed: Callable[[list[str]], np.ndarray]  # the retrieval encoder
    augment: Augmenter
    oracle: Mapping[str, Augmentation] = field(default_factory=dict)
    show_progress: bool = True
    encodings: dict[str, object] = field(default_factory=dict)
    oracle_encodings: dict[str, object] = field(default_factory=dict)

    def question_texts(self, rows: list[int]) -> list[str]:
        return [self.dataset.questions[r].text for r in rows]

    def passage_texts(self, passage_rows: list[int]) -> list[str]:
        return [self.dataset.passages[p].text for p in passage_rows]

    @cached_property
    def corpus(self) -> Corpus:
        """The dataset's passages as a corpus to encode, with their augmentation (see the class)."""
        return Corpus(self.base, self.layers, list(self.dataset.passages),
                      dataset_augmentations(self.dataset, self.augment), self.embed, self.work_dir,
                      self.show_progress, self.encodings)



    @cached_property
    def oracle_corpus(self) -> Corpus:
        """The same passages with the dataset's own augmentation (:attr:`oracle`), encoded apart."""
        check_oracle(self.dataset, self.oracle)
        return Corpus(self.base, self.layers, list(self.dataset.passages), dict(self.oracle),
                      self.embed, self.work_dir / "oracle", self.show_progress, self.oracle_encodings)

    def routings(self, hits: Hits) -> list[Routing]:
        """Each question's routing from its retrieved passages."""
        out = []
        for q, (rows, scores) in enumerate(zip(hits.rows, hits.scores)):
            out.append(Routing(passage_ids=tuple(self.dataset.passages[r].passage_id for r in rows),
                               scores=tuple(scores), documents=tuple(self.passage_texts(rows)),
                               embedding=None if hits.embeddings is None else hits.embeddings[q]))
        return out


def check_oracle(dataset: Dataset, oracle: Mapping[str, Augmentation]) -> None:
    """Refuse ``*_oracle`` methods when ``oracle`` lacks a passage's augmentation, naming the first."""
    missing = [p.passage_id for p in dataset.passages if p.passage_id not in oracle]
    if missing:
        raise ValueError(f"the *_oracle methods encode with the dataset's own augmentations.parquet, which "
                         f"lacks {len(missing)} passages (first: {missing[0]})")


class EvalMethod:
    """A named method the harness evaluates: encode once, then a model and routings per batch."""

    name: str

    def encode(self, ctx: EvalContext) -> EncodingCost:
        """Encode the corpus (once); what it cost."""
        return EncodingCost()

    def model(self, ctx: EvalContext) -> MethodModel:
        raise NotImplementedError

    def routings(self, ctx: EvalContext, question_rows: list[int], hits: Hits) -> list[Routing]:
        return ctx.routings(hits)


class Baseline(EvalMethod):
    """A method with nothing to encode: closed-book or standard RAG."""

    def __init__(self, model: MethodModel):
        self._model = model
        self.name = model.name

    def model(self, ctx: EvalContext) -> MethodModel:
        return self._model


class Encoded(EvalMethod):
    """A registered method's variant: its ``encode_corpus`` on the dataset, then its model.

    A variant the method lists in ``SWAPPED_PASSAGES`` is the ablation that checks an adapter
    depends on its documents: each question's retrieved passages are swapped for as many others
    that are neither retrieved nor gold for it. Named ``<variant>_oracle``, the variant encodes
    with the dataset's own augmentation file instead (the "oracle augmentation" rows).
    """

    def __init__(self, variant: str, method: str, config: MethodConfig, oracle: bool = False):
        self.variant, self.method, self.config, self.oracle = variant, method, config, oracle
        self.name = variant + ORACLE_SUFFIX if oracle else variant
        self.irrelevant = variant in getattr(method_model(method), "SWAPPED_PASSAGES", ())

    def _encoded(self, ctx: EvalContext) -> tuple[MethodModel, EncodingCost]:
        """The variant's model and cost, encoded once per context (not once per batch or query)."""
        corpus = ctx.oracle_corpus if self.oracle else ctx.corpus
        key = f"model:{self.variant}"
        if key not in corpus.encodings:
            corpus.encodings[key] = method_model(self.method).encode_corpus(corpus, self.config, self.variant)
        return corpus.encodings[key]

    def encode(self, ctx: EvalContext) -> EncodingCost:
        return self._encoded(ctx)[1]

    def model(self, ctx: EvalContext) -> MethodModel:
        return self._encoded(ctx)[0]

    def routings(self, ctx: EvalContext, question_rows: list[int], hits: Hits) -> list[Routing]:
        if self.irrelevant:
            position = ctx.dataset.passage_index()
            rows = [_elsewhere(ctx, position, q, found) for q, found in zip(question_rows, hits.rows)]
            hits = Hits(rows, hits.scores, hits.embeddings)
        return ctx.routings(hits)


class Routed(EvalMethod):
    """A model whose routings come from a function of the questions' embeddings (a federation's
    fan-out to its sites), not from the harness's retrieval."""

    def __init__(self, model: MethodModel, route: Callable[[np.ndarray], list[Routing]], stored_bytes: int = 0):
        self._model, self.route, self.stored_bytes = model, route, stored_bytes
        self.name = model.name

    def encode(self, ctx: EvalContext) -> EncodingCost:
        return EncodingCost(0.0, self.stored_bytes)

    def model(self, ctx: EvalContext) -> MethodModel:
        return self._model

    def routings(self, ctx: EvalContext, question_rows: list[int], hits: Hits) -> list[Routing]:
        embeddings = hits.embeddings if hits.embeddings is not None else ctx.embed(ctx.question_texts(question_rows))
        return self.route(embeddings)


class Served(EvalMethod):
    """A method answered by a service, not by this process's query engine: the query API, asked
    over HTTP (``ask`` maps question texts to answers). The harness scores and times it the same way."""

    def __init__(self, name: str, ask: Callable[[list[str]], list[str]], stored_bytes: int = 0):
        self.name, self.ask, self.stored_bytes = name, ask, stored_bytes

    def encode(self, ctx: EvalContext) -> EncodingCost:
        return EncodingCost(0.0, self.stored_bytes)

    def answers(self, questions: list[str]) -> list[str]:
        return self.ask(questions)


def _elsewhere(ctx: EvalContext, position: dict[str, int], question_row: int, found: list[int]) -> list[int]:
    """As many passage rows as ``found``, half the corpus away, none retrieved or gold for the question
    (``position`` maps passage ids to rows)."""
    count = len(ctx.dataset.passages)
    taken = set(found) | {position[g] for g in ctx.dataset.questions[question_row].gold_passage_ids}
    if count < len(taken) + len(found):
        raise ValueError(f"{len(found)} irrelevant passages: needs more than {len(taken) + len(found) - 1} "
                         f"passages, the dataset has {count}")
    swapped = []
    for row in found:
        other = (row + count // 2) % count
        while other in taken:
            other = (other + 1) % count
        taken.add(other)
        swapped.append(other)
    return swapped


ORACLE_SUFFIX = "_oracle"

BASELINES: dict[str, Callable[[], MethodModel]] = {
    "closed_book": ClosedBookModel,
    "standard_rag": StandardRAGModel,
    "standard_rag_top1": lambda: StandardRAGModel(passages=1),
}


def build_methods(names: Sequence[str], configs: Mapping[str, MethodConfig] | None = None) -> list[EvalMethod]:
    """Instantiate methods by name: a baseline, or a registered method's variant configured by
    ``configs[<method>]`` (its defaults when absent). Unknown names and configuration keys are
    refused, listing the known ones."""
    configs = dict(configs or {})
    stray = sorted(set(configs) - set(REGISTRY))
    if stray:
        raise ValueError(f"configurations for unknown methods {stray} (known: {', '.join(REGISTRY)})")
    methods: list[EvalMethod] = []
    for name in names:
        if name in BASELINES:
            methods.append(Baseline(BASELINES[name]()))
            continue
        oracle = name.endswith(ORACLE_SUFFIX)
        variant = name.removesuffix(ORACLE_SUFFIX)
        try:
            method = method_of(variant)
        except KeyError:
            known = [*BASELINES, *(v for m in REGISTRY for v in method_model(m).VARIANTS)]
            raise ValueError(f"eval.methods: unknown ['{name}'] (known: {', '.join(known)}, and any "
                             f"encoded one with '{ORACLE_SUFFIX}')") from None
        methods.append(Encoded(variant, method, configs.get(method) or method_model(method).CONFIG(), oracle))
    return methods
