"""The benchmark's guarantees: unknowable facts, separated templates, real multi-hop, skewed sites."""

import collections

from fedprag.shared.data import world
from fedprag.shared.data.benchmark import BenchmarkSpec, dirichlet_sites, make_benchmark, training_people


def test_every_person_has_at_least_five_attributes_in_their_passage():
    data = make_benchmark(BenchmarkSpec(people=10))
    assert len(world.ATTRIBUTES) >= 5
    for passage in data.passages:
        assert passage.text.count(".") >= len(world.ATTRIBUTES)


def test_question_templates_are_disjoint_by_purpose():
    families = [world.AUGMENT_TEMPLATES, world.TEST_TEMPLATES, world.OOD_TEMPLATES, world.MULTIHOP_TEMPLATES]
    seen = set()
    for family in families:
        templates = {t for ts in family.values() for t in ts}
        assert not templates & seen
        seen |= templates


def test_benchmark_people_are_never_pretraining_people():
    pretraining = {p.name for p in training_people()}
    data = make_benchmark(BenchmarkSpec(people=200))
    for question in data.questions:
        assert not any(name in question.text for name in pretraining)


def test_kinds_counts_and_multihop_gold():
    spec = BenchmarkSpec(people=40)
    data = make_benchmark(spec)
    kinds = collections.Counter(q.kind for q in data.questions)
    assert kinds == {"single": 40 * len(world.ATTRIBUTES), "ood": 40 * spec.ood_per_person, "multihop": 40}
    for q in data.questions:
        if q.kind == "multihop":
            assert len(set(q.gold_passage_ids)) == 2
    assert len(data.augmentations) == 40
    for aug in data.augmentations.values():
        assert len(aug.qa) >= 3


def test_generation_is_deterministic():
    a, b = make_benchmark(BenchmarkSpec(people=12, seed=3)), make_benchmark(BenchmarkSpec(people=12, seed=3))
    assert a.passages == b.passages and a.questions == b.questions


def test_small_alpha_concentrates_each_topic_on_few_sites():
    topics = [f"t{i % 4}" for i in range(800)]
    skewed = dirichlet_sites(topics, 6, alpha=0.1, seed=0)
    even = dirichlet_sites(topics, 6, alpha=100.0, seed=0)

    def top_share(sites):
        per_topic = collections.defaultdict(collections.Counter)
        for t, s in zip(topics, sites):
            per_topic[t][s] += 1
        return sum(c.most_common(1)[0][1] for c in per_topic.values()) / len(topics)

    assert top_share(skewed) > 0.6
    assert top_share(even) < 0.3
