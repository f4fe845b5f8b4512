"""Evaluation methods build the prompts their definitions promise, and every method has the same shape."""

from pathlib import Path

import pytest

from fedprag.shared import prompts
from fedprag.shared.data.augment import cloze_augmenter
from fedprag.shared.data.benchmark import BenchmarkSpec, make_benchmark
from fedprag.shared.eval.methods import EvalContext, Hits, build_methods
from fedprag.shared.methods import REGISTRY, method_model
from fedprag.shared.methods.base import MethodModel
from fedprag.shared.methods.config import MethodConfig
from fedprag.shared.methods.distilled.model import DistilledModel

METHODS_DIR = Path(__file__).resolve().parents[2] / "src" / "fedprag" / "shared" / "methods"


def _context(hits: Hits) -> EvalContext:
    dataset = make_benchmark(BenchmarkSpec(people=8, sites=2))
    return EvalContext(dataset=dataset, base=None, layers={}, hits=hits, work_dir=None, embed=None,
                       augment=cloze_augmenter)


def test_every_registered_method_has_the_same_files_and_roles():
    for name in REGISTRY:
        files = {p.stem for p in (METHODS_DIR / name).glob("*.py")}
        assert {"config", "layers", "trainer", "serializer", "model"} <= files, name
        model = method_model(name)
        assert issubclass(model.CONFIG, MethodConfig) and model.CONFIG.SECTION == name
        assert model.VARIANTS[0] == name and callable(model.encode_corpus)
        classes = [v for v in vars(model).values() if isinstance(v, type) and issubclass(v, MethodModel)
                   and v.__module__ == model.__name__]
        assert len(classes) == 1, f"{name}: one MethodModel per method"


def test_unknown_method_names_are_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="eval.methods: unknown \\['nope'\\] .*closed_book.*poly_router"):
        build_methods(["nope"])


def test_standard_rag_puts_every_retrieved_passage_in_context_and_top1_only_the_best():
    hits = Hits([[2, 0, 1]], [[0.9, 0.5, 0.1]])
    ctx = _context(hits)
    every, best = build_methods(["standard_rag", "standard_rag_top1"])
    question = ctx.question_texts([0])
    for method, rows in ((every, [2, 0, 1]), (best, [2])):
        model = method.model(ctx)
        routings = method.routings(ctx, [0], hits)
        assert model.prompts(question, routings) == [prompts.with_context(ctx.passage_texts(rows), question[0])]
        assert model.adapter(routings) is None
    assert best.name == "standard_rag_top1"


class _RecordingEncoder:
    """Stands in for the generator: records which documents each variant hands it."""

    def __init__(self):
        self.documents = []

    def adapters(self, documents):
        self.documents.append(documents)

    def masked_prompt(self, documents, question):
        return question


def _distilled_stub(monkeypatch, encoder):
    """encode_corpus without the generator: each variant's model over the recording encoder."""
    module = method_model("distilled")

    def encode(corpus, config, variant):
        return DistilledModel(encoder, passages=1 if variant == "distilled_top1" else None, name=variant), None

    monkeypatch.setattr(module, "encode_corpus", encode)


def test_distilled_variants_hand_the_generator_the_retrieved_the_best_or_someone_elses_passages(monkeypatch):
    hits = Hits([[2, 0, 1]], [[0.9, 0.5, 0.1]])
    ctx = _context(hits)
    encoder = _RecordingEncoder()
    _distilled_stub(monkeypatch, encoder)
    for method in build_methods(["distilled", "distilled_top1", "distilled_irrelevant"]):
        method.model(ctx).adapter(method.routings(ctx, [0], hits))
    every, best, irrelevant = (docs[0] for docs in encoder.documents)
    assert every == ctx.passage_texts([2, 0, 1])
    assert best == ctx.passage_texts([2])
    assert len(irrelevant) == 3 and not set(irrelevant) & set(every)


def test_distilled_irrelevant_refuses_a_corpus_too_small_to_hold_other_passages(monkeypatch):
    hits = Hits([[2, 0, 1]], [[0.9, 0.5, 0.1]])
    ctx = _context(hits)
    ctx.dataset.passages[:] = ctx.dataset.passages[:4]
    _distilled_stub(monkeypatch, _RecordingEncoder())
    (irrelevant,) = build_methods(["distilled_irrelevant"])
    with pytest.raises(ValueError, match="needs more than"):
        irrelevant.routings(ctx, [0], hits)
