"""Evaluation methods build the prompts their definitions promise."""

from shared import prompts
from shared.data.benchmark import BenchmarkSpec, make_benchmark
from shared.eval.methods import EvalContext, Hits, build_methods
from shared.methods.prag import PRAGConfig


def _context(hits: Hits) -> EvalContext:
    dataset = make_benchmark(BenchmarkSpec(people=4, sites=2))
    return EvalContext(dataset=dataset, base=None, layers={}, hits=hits, work_dir=None, embed=None)


def test_standard_rag_puts_every_retrieved_passage_in_context_and_top1_only_the_best():
    hits = Hits([[2, 0, 1]], [[0.9, 0.5, 0.1]])
    ctx = _context(hits)
    every, best = build_methods(["standard_rag", "standard_rag_top1"], PRAGConfig())
    question = ctx.question_texts([0])[0]
    assert every.inputs(ctx, [0], hits) == ([prompts.with_context(ctx.passage_texts([2, 0, 1]), question)], None)
    assert best.inputs(ctx, [0], hits) == ([prompts.with_context(ctx.passage_texts([2]), question)], None)
    assert best.name == "standard_rag_top1"
