"""The knowledge benchmark: fictional people, one passage each, split across sites by topic.

Questions come in three kinds:

* ``single`` — one fact, asked with an in-distribution test template;
* ``ood`` — one fact, asked with a held-out phrasing no training data uses;
* ``multihop`` — a fact of the person's mentor, so the two facts sit in two passages (and often at
  two sites).

Benchmark people never share a name with the people the tiny model was pretrained on.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import numpy as np

from fedprag.shared.data import world
from fedprag.shared.data.schema import Augmentation, Dataset, Passage, Question

# The people the built-in model is pretrained on. Benchmarks never reuse their names.
TRAINING_WORLD_SEED = 1000
TRAINING_WORLD_SIZE = 600


def training_people() -> list[world.Person]:
    """The fixed population the tiny model's pretraining corpus describes."""
    return world.make_people(TRAINING_WORLD_SEED, TRAINING_WORLD_SIZE)


@dataclass(frozen=True)
class BenchmarkSpec:
    """What ``fedprag data make`` generates."""

    people: int = 60
    sites: int = 6
    alpha: float = 0.1
    seed: int = 0
    ood_per_person: int = 2

    def validate(self) -> None:
        if self.people < 2:
            raise ValueError("benchmark.people: must be at least 2")
        if self.sites < 1:
            raise ValueError("benchmark.sites: must be at least 1")
        if self.alpha <= 0:
            raise ValueError("benchmark.alpha: the Dirichlet concentration must be positive")
        if not 0 <= self.ood_per_person <= len(world.OOD_TEMPLATES):
            raise ValueError(f"benchmark.ood_per_person: must be between 0 and {len(world.OOD_TEMPLATES)}")


def dirichlet_sites(topics: list[str], sites: int, alpha: float, seed: int) -> list[int]:
    """Assign each item to a site: per topic, site shares are drawn from Dirichlet(alpha)."""
    rng = np.random.default_rng(seed)
    shares = {t: rng.dirichlet(np.full(sites, alpha)) for t in sorted(set(topics))}
    return [int(rng.choice(sites, p=shares[t])) for t in topics]


def _augmentation(person: world.Person, passage_id: str, rng: random.Random) -> Augmentation:
    qa = [(world.ask(world.AUGMENT_TEMPLATES, a, person.name, rng), person.facts[a]) for a in world.ATTRIBUTES]
    rng.shuffle(qa)
    return Augmentation(passage_id, world.write_passage(person, rng), qa)


def make_benchmark(spec: BenchmarkSpec = BenchmarkSpec()) -> Dataset:
    """Generate a benchmark dataset (passages, questions, augmentations) from ``spec``."""
    spec.validate()
    rng = random.Random(spec.seed)
    reserved = frozenset(p.name for p in training_people())
    people = world.make_people(spec.seed + 1, spec.people, reserved)
    sites = dirichlet_sites([p.sector for p in people], spec.sites, spec.alpha, spec.seed)
    pid = {p.name: f"p{i:05d}" for i, p in enumerate(people)}
    by_name = {p.name: p for p in people}

    passages = [Passage(pid[p.name], site, world.write_passage(p, rng)) for p, site in zip(people, sites)]
    augmentations = {pid[p.name]: _augmentation(p, pid[p.name], rng) for p in people}

    questions: list[Question] = []

    def add(text: str, answer: str, gold: list[str], kind: str) -> None:
        questions.append(Question(f"q{len(questions):05d}", text, [answer], gold, kind))

    for p in people:
        for attribute in world.ATTRIBUTES:
            add(world.ask(world.TEST_TEMPLATES, attribute, p.name, rng), p.facts[attribute], [pid[p.name]], "single")
        for attribute in rng.sample(sorted(world.OOD_TEMPLATES), spec.ood_per_person):
            add(world.ask(world.OOD_TEMPLATES, attribute, p.name, rng), p.facts[attribute], [pid[p.name]], "ood")
        mentor = by_name[p.facts["mentor"]]
        attribute = rng.choice(sorted(world.MULTIHOP_TEMPLATES))
        add(world.ask(world.MULTIHOP_TEMPLATES, attribute, p.name, rng), mentor.facts[attribute],
            [pid[p.name], pid[mentor.name]], "multihop")
    return Dataset(passages, questions, augmentations)


def synthetic_population(people: int, seed: int = 77) -> tuple[list[Passage], dict[str, Augmentation]]:
    """Passages and augmentations about ``people`` other people, with ids (``population-…``) that
    cannot clash with a dataset's: a stand-in for a site's existing corpus when fitting a pool."""
    others = make_benchmark(BenchmarkSpec(people=people, sites=1, seed=seed))
    passages = [dataclasses.replace(p, passage_id=f"population-{p.passage_id}") for p in others.passages]
    augmentations = {f"population-{pid}": dataclasses.replace(a, passage_id=f"population-{pid}")
                     for pid, a in others.augmentations.items()}
    return passages, augmentations
