"""The evaluation harness: every method on the same base model, data and retrieval.

For each method it encodes the corpus once, answers every question in batches, times single
queries end to end (embed → search → adapter → generate), and records peak memory.
"""

from __future__ import annotations

import random
import statistics
import time
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from fedprag.shared.data.augment import own_augmentations, sentences
from fedprag.shared.data.schema import Augmentation, Dataset
from fedprag.shared.eval.config import HarnessConfig
from fedprag.shared.eval.methods import Encoded, EvalContext, EvalMethod, Hits, Served, check_oracle
from fedprag.shared.eval.report import KindScore, MethodResult, Report
from fedprag.shared.eval.resources import PeakMemory, machine_description
from fedprag.shared.log import get_logger
from fedprag.shared.lora.layers import attach_lora
from fedprag.shared.metrics import exact_match, token_f1
from fedprag.shared.models.augment_config import AugmentConfig
from fedprag.shared.models.augmenter import augmenter_summary, make_augmenter
from fedprag.shared.models.loading import BaseModel
from fedprag.shared.query import QueryEngine
from fedprag.shared.retrieval.encoder import SentenceEncoder
from fedprag.shared.retrieval.index import PassageIndex, complete_at_k, recall_at_k

log = get_logger(__name__)


class Retriever:
    """The shared retrieval step: embed with MiniLM, search one faiss index over all passages."""

    def __init__(self, dataset: Dataset, work_dir: Path, show_progress: bool):
        self.encoder = SentenceEncoder()
        self.texts = [p.text for p in dataset.passages]
        embeddings = np.concatenate([self.encoder.embed(self.texts[s:s + 256]) for s in
                                     tqdm(range(0, len(self.texts), 256), desc="embed passages", disable=not show_progress)])
        self.index = PassageIndex.build(embeddings, list(range(len(self.texts))))
        self.index.save(work_dir / "passages.faiss")

    def top_k(self, questions: list[str], k: int, hops: int = 1) -> Hits:
        """The ``k`` best passage rows per question, with their inner-product scores.

        With ``hops=2`` the second place goes to a *bridge* passage: every sentence of the top
        passage is a query of its own, and the best-scoring passage other than the top one wins.
        A multi-hop question names only the first person, so one hop never finds the passage
        about the person the first passage leads to (the mentor: 0 of 60 on the default
        benchmark); the sentence that names them does (30 of 60).
        """
        embeddings = self.encoder.embed(questions)
        scores, rows = self.index.search(embeddings, k)
        hits = Hits([[int(r) for r in row if r >= 0] for row in rows],
                    [[float(s) for s, r in zip(srow, row) if r >= 0] for srow, row in zip(scores, rows)], embeddings)
        return self._bridged(hits, k) if hops == 2 else hits

    def _bridged(self, hits: Hits, k: int) -> Hits:
        groups = [sentences(self.texts[row[0]]) for row in hits.rows]
        scores, rows = self.index.search(self.encoder.embed([s for group in groups for s in group]), 2)
        out_rows, out_scores, start = [], [], 0
        for top, top_scores, group in zip(hits.rows, hits.scores, groups):
            end = start + len(group)
            found = [(float(s), int(r)) for s, r in zip(scores[start:end].ravel(), rows[start:end].ravel())
                     if r >= 0 and r != top[0]]
            start = end
            bridge_score, bridge = max(found, default=(None, None))
            rest = [(r, s) for r, s in zip(top[1:], top_scores[1:]) if r != bridge]
            head = [(top[0], top_scores[0])] + ([(bridge, bridge_score)] if found else [])
            kept = (head + rest)[:k]
            out_rows.append([r for r, _ in kept])
            out_scores.append([s for _, s in kept])
        return Hits(out_rows, out_scores, hits.embeddings)


def _score(dataset: Dataset, predictions: list[str]) -> dict[str, KindScore]:
    by_kind: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for question, prediction in zip(dataset.questions, predictions):
        by_kind[question.kind].append((exact_match(prediction, question.answers), token_f1(prediction, question.answers)))
    return {kind: KindScore(em=statistics.fmean(e for e, _ in v), f1=statistics.fmean(f for _, f in v), n=len(v))
            for kind, v in sorted(by_kind.items())}


def _answer(ctx: EvalContext, engine: QueryEngine, method: EvalMethod, rows: list[int], hits: Hits,
            max_new_tokens: int) -> list[str]:
    if isinstance(method, Served):
        return method.answers(ctx.question_texts(rows))
    return engine.answer(method.model(ctx), ctx.question_texts(rows), method.routings(ctx, rows, hits), max_new_tokens)


def run_method(ctx: EvalContext, method: EvalMethod, retriever: Retriever, config: HarnessConfig) -> MethodResult:
    """Encode, answer every question, and time single queries for one method."""
    questions = ctx.dataset.questions
    engine = QueryEngine(ctx.base, ctx.layers)
    with PeakMemory() as memory:
        cost = method.encode(ctx)
        predictions: list[str] = []
        with tqdm(total=len(questions), desc=f"answer {method.name}", unit="q", disable=not ctx.show_progress) as bar:
            for start in range(0, len(questions), config.batch_size):
                rows = list(range(start, min(start + config.batch_size, len(questions))))
                predictions += _answer(ctx, engine, method, rows, ctx.hits.select(rows), config.max_new_tokens)
                bar.update(len(rows))
        latencies = []
        sample = random.Random(config.seed).sample(range(len(questions)), min(config.latency_queries, len(questions)))
        for row in sample:
            started = time.perf_counter()
            retrieved = retriever.top_k([questions[row].text], config.top_k, config.hops)
            _answer(ctx, engine, method, [row], retrieved, config.max_new_tokens)
            latencies.append((time.perf_counter() - started) * 1000)
    result = MethodResult(
        method=method.name, scores=_score(ctx.dataset, predictions),
        encode_seconds_per_passage=cost.seconds_per_passage, stored_bytes=cost.stored_bytes,
        latency_ms_p50=float(np.percentile(latencies, 50)) if latencies else 0.0,
        latency_ms_p95=float(np.percentile(latencies, 95)) if latencies else 0.0,
        peak_memory_mb=memory.peak_mb, predictions=predictions,
    )
    log.info("eval.method.done", method=method.name, **{f"em_{k}": round(s.em, 4) for k, s in result.scores.items()})
    return result


def evaluate(dataset: Dataset, base: BaseModel, methods: list[EvalMethod], config: HarnessConfig,
             work_dir: Path, show_progress: bool = True, augment: AugmentConfig | None = None,
             oracle: Mapping[str, Augmentation] | None = None) -> Report:
    """Run ``methods`` on ``dataset`` with one shared retrieval; returns the report.

    Passages are encoded with the dataset's own augmentation where it has one (unless
    ``augment.use_dataset`` is off), else with what ``augment``'s augmenter writes (default: the
    model-based one, with ``base`` as the writer), cached under ``work_dir/augment``. The
    ``*_oracle`` variants encode with ``oracle`` (default: the dataset's own augmentation file).
    """
    config.validate()
    augment = augment or AugmentConfig()
    oracle = dataset.augmentations if oracle is None else oracle
    if any(isinstance(m, Encoded) and m.oracle for m in methods):
        check_oracle(dataset, oracle)  # before any work
    dataset = own_augmentations(dataset, augment.use_dataset)
    augmenter = make_augmenter(augment, base, work_dir / "augment", show_progress)
    work_dir.mkdir(parents=True, exist_ok=True)
    retriever = Retriever(dataset, work_dir, show_progress)
    hits = retriever.top_k([q.text for q in dataset.questions], config.top_k, config.hops)
    retrieved = hits.rows
    position = dataset.passage_index()
    gold = [[position[g] for g in q.gold_passage_ids] for q in dataset.questions]
    kinds = sorted({q.kind for q in dataset.questions})
    of_kind = {kind: ([r for r, q in zip(retrieved, dataset.questions) if q.kind == kind],
                      [g for g, q in zip(gold, dataset.questions) if q.kind == kind]) for kind in kinds}
    recall = {kind: recall_at_k(*of_kind[kind], config.top_k) for kind in kinds}
    complete = {kind: complete_at_k(*of_kind[kind], config.top_k) for kind in kinds}
    ctx = EvalContext(dataset=dataset, base=base, layers=attach_lora(base.model), hits=hits,
                      embed=retriever.encoder.embed, augment=augmenter, oracle=oracle,
                      work_dir=work_dir, show_progress=show_progress)
    results = [run_method(ctx, method, retriever, config) for method in methods]
    return Report(
        machine=machine_description(), base_model=str(base.path.name), base_model_digest=base.digest[:16],
        passages=len(dataset.passages), questions=len(dataset.questions), top_k=config.top_k, hops=config.hops,
        recall_at_k=recall, complete_at_k=complete, results=results,
        augmentation={"from_dataset": sum(p.passage_id in dataset.augmentations for p in dataset.passages),
                      **augmenter_summary(augmenter)},
    )
