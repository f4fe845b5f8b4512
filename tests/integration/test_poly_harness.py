"""Poly-PRAG on a small real model: routed experts inject knowledge, and routing is what does it."""

import pytest

from fedprag.shared.data.benchmark import BenchmarkSpec, make_benchmark
from fedprag.shared.eval.config import HarnessConfig
from fedprag.shared.eval.harness import evaluate
from fedprag.shared.eval.methods import build_methods
from fedprag.shared.methods.poly import PolyConfig
from fedprag.shared.methods.prag import PRAGConfig
from fedprag.shared.models.loading import load_causal_lm

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def report(small_model_spec, tmp_path_factory):
    dataset = make_benchmark(BenchmarkSpec(people=12, sites=3, seed=5))
    base = load_causal_lm(small_model_spec)
    methods = build_methods(["closed_book", "prag", "poly", "poly_uniform", "poly_router"], {"prag": PRAGConfig(), "poly": PolyConfig()})
    return evaluate(dataset, base, methods, HarnessConfig(latency_queries=2), tmp_path_factory.mktemp("poly"),
                    show_progress=False)


def test_poly_beats_prag_and_uniform_routing(report):
    em = {r.method: r.scores["single"].em for r in report.results}
    assert em["poly"] >= em["prag"], em
    assert em["poly"] >= em["poly_uniform"] + 0.1, em
    assert em["poly"] >= em["closed_book"] + 0.3, em


def test_query_router_answers_without_per_passage_routing(report):
    em = {r.method: r.scores["single"].em for r in report.results}
    assert em["poly_router"] >= em["closed_book"] + 0.2, em


def test_pool_and_routing_are_small(report):
    by = {r.method: r for r in report.results}
    assert 0 < by["poly"].stored_bytes < by["prag"].stored_bytes
