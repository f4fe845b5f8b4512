"""The model-based augmenter end to end: the shipped model writes the encoding data of passages that
arrive with none, and Poly-PRAG encodes them from it well enough to answer their questions."""

import dataclasses

import pytest

from fedprag.shared.data.benchmark import BenchmarkSpec, make_benchmark
from fedprag.shared.eval.config import HarnessConfig
from fedprag.shared.eval.harness import evaluate
from fedprag.shared.eval.methods import build_methods
from fedprag.shared.models.augment_config import AugmentConfig
from fedprag.shared.models.augmenter import ModelAugmenter
from fedprag.shared.models.loading import load_causal_lm

pytestmark = pytest.mark.integration


def test_passages_without_augmentation_are_encoded_from_what_the_model_writes(tmp_path):
    base = load_causal_lm("tiny")
    dataset = make_benchmark(BenchmarkSpec(people=8, sites=1, seed=21))
    bare = dataclasses.replace(dataset, augmentations={})  # as a user's corpus: no augmentation file
    report = evaluate(bare, base, build_methods(["closed_book", "poly"]), HarnessConfig(latency_queries=0),
                      tmp_path, show_progress=False)
    em = {r.method: r.scores["single"].em for r in report.results}
    assert em["poly"] >= em["closed_book"] + 0.5, em

    written = report.augmentation
    assert written["source"] == "model" and written["from_dataset"] == 0
    assert written["passages"] == 8 and written["generated"] == 8 and written["cloze_fallbacks"] == 0
    assert written["pairs_kept"] >= 8 * 5 and written["verbatim_share"] >= 0.8, written

    cached = ModelAugmenter(base, AugmentConfig(), tmp_path / "augment")  # where evaluate cached them
    asked = cached(bare.passages)
    assert cached.stats.generated == 0 and sum(len(a.qa) for a in asked.values()) == written["pairs_kept"]
    tests = {q.text for q in dataset.questions}
    assert not tests & {q for a in asked.values() for q, _ in a.qa}  # it writes no test question
