"""Retrieval with the real all-MiniLM-L6-v2 encoder and a real faiss index on disk."""

import numpy as np
import pytest

from fedprag.shared.data.benchmark import BenchmarkSpec, make_benchmark
from fedprag.shared.eval.harness import Retriever
from fedprag.shared.retrieval.encoder import EMBEDDING_DIM, SentenceEncoder
from fedprag.shared.retrieval.index import PassageIndex, complete_at_k, recall_at_k


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder()


def test_embeddings_are_unit_vectors(encoder):
    vectors = encoder.embed(["a harp", "a violin", "Quessa is a town"])
    assert vectors.shape == (3, EMBEDDING_DIM) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_questions_retrieve_their_gold_passage(encoder, tmp_path):
    data = make_benchmark(BenchmarkSpec(people=30))
    index = PassageIndex.build(encoder.embed([p.text for p in data.passages]), list(range(len(data.passages))))
    index.save(tmp_path / "index.faiss")
    loaded = PassageIndex.load(tmp_path / "index.faiss")
    assert len(loaded) == 30
    single = [q for q in data.questions if q.kind == "single"]
    _, rows = loaded.search(encoder.embed([q.text for q in single]), 3)
    position = data.passage_index()
    recall = recall_at_k(rows.tolist(), [[position[g] for g in q.gold_passage_ids] for q in single], 3)
    assert recall > 0.9


def test_questions_embedded_in_bfloat16_retrieve_what_float32_retrieves(encoder):
    """The query API embeds questions in bfloat16 where the CPU has it; passages stay float32."""
    data = make_benchmark(BenchmarkSpec(people=30))
    index = PassageIndex.build(encoder.embed([p.text for p in data.passages]), list(range(len(data.passages))))
    questions = [q.text for q in data.questions if q.kind == "single"]
    exact, fast = encoder.embed(questions), SentenceEncoder(dtype="bfloat16").embed(questions)
    assert fast.dtype == np.float32 and float(np.min(np.sum(exact * fast, axis=1))) > 0.999
    assert (index.search(fast, 3)[1] == index.search(exact, 3)[1]).mean() > 0.97
    with pytest.raises(ValueError, match="'float16' is not one of"):
        SentenceEncoder(dtype="float16")


def test_recall_at_k_counts_fraction_of_gold():
    assert recall_at_k([[1, 2, 3], [4, 5, 6]], [[1], [9, 5]], k=3) == pytest.approx(0.75)
    assert recall_at_k([[1, 2, 3]], [[3]], k=2) == 0.0


def test_complete_at_k_needs_every_gold_passage():
    assert complete_at_k([[1, 2, 3], [4, 5, 6]], [[1], [9, 5]], k=3) == pytest.approx(0.5)
    assert complete_at_k([[1, 2, 3]], [[1, 3]], k=2) == 0.0
    assert complete_at_k([[1, 2, 3]], [[2, 1]], k=2) == 1.0


def test_a_bridge_hop_finds_the_passage_the_top_passage_leads_to(tmp_path):
    data = make_benchmark(BenchmarkSpec(people=30))
    retriever = Retriever(data, tmp_path, show_progress=False)
    multihop = [q for q in data.questions if q.kind == "multihop"]
    position = data.passage_index()
    gold = [[position[g] for g in q.gold_passage_ids] for q in multihop]
    one = retriever.top_k([q.text for q in multihop], 3)
    two = retriever.top_k([q.text for q in multihop], 3, hops=2)
    assert complete_at_k(two.rows, gold, 3) > complete_at_k(one.rows, gold, 3)
    for first, second in zip(one.rows, two.rows):
        assert second[0] == first[0] and len(second) == 3 and len(set(second)) == 3  # top kept, no repeats
    assert all(len(r) == len(s) for r, s in zip(two.rows, two.scores))
