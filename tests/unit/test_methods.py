"""Evaluation methods build the prompts their definitions promise."""

import pytest

from shared import prompts
from shared.data.benchmark import BenchmarkSpec, make_benchmark
from shared.eval.methods import EvalContext, Hits, build_methods
from shared.methods.prag import PRAGConfig


def _context(hits: Hits) -> EvalContext:
    dataset = make_benchmark(BenchmarkSpec(people=8, sites=2))
    return EvalContext(dataset=dataset, base=None, layers={}, hits=hits, work_dir=None, embed=None)


def test_standard_rag_puts_every_retrieved_passage_in_context_and_top1_only_the_best():
    hits = Hits([[2, 0, 1]], [[0.9, 0.5, 0.1]])
    ctx = _context(hits)
    every, best = build_methods(["standard_rag", "standard_rag_top1"], PRAGConfig())
    question = ctx.question_texts([0])[0]
    assert every.inputs(ctx, [0], hits) == ([prompts.with_context(ctx.passage_texts([2, 0, 1]), question)], None)
    assert best.inputs(ctx, [0], hits) == ([prompts.with_context(ctx.passage_texts([2]), question)], None)
    assert best.name == "standard_rag_top1"


class _RecordingEncoder:
    """Stands in for the generator: records which documents each variant hands it."""

    def __init__(self):
        self.documents = []

    def adapters(self, documents):
        self.documents.append(documents)

    def masked_prompt(self, documents, question):
        return question


def test_distilled_variants_hand_the_generator_the_retrieved_the_best_or_someone_elses_passages():
    hits = Hits([[2, 0, 1]], [[0.9, 0.5, 0.1]])
    ctx = _context(hits)
    encoder = _RecordingEncoder()
    ctx.encodings["distilled"] = (encoder, None)
    for method in build_methods(["distilled", "distilled_top1", "distilled_irrelevant"], PRAGConfig()):
        method.inputs(ctx, [0], hits)
    every, best, irrelevant = (docs[0] for docs in encoder.documents)
    assert every == ctx.passage_texts([2, 0, 1])
    assert best == ctx.passage_texts([2])
    assert len(irrelevant) == 3 and not set(irrelevant) & set(every)


def test_distilled_irrelevant_refuses_a_corpus_too_small_to_hold_other_passages():
    hits = Hits([[2, 0, 1]], [[0.9, 0.5, 0.1]])
    ctx = _context(hits)
    ctx.dataset.passages[:] = ctx.dataset.passages[:4]
    ctx.encodings["distilled"] = (_RecordingEncoder(), None)
    (irrelevant,) = build_methods(["distilled_irrelevant"], PRAGConfig())
    with pytest.raises(ValueError, match="needs more than"):
        irrelevant.inputs(ctx, [0], hits)
