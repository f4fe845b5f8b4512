"""The pretraining corpus: an endless, seeded stream of examples about fictional people.

Four kinds of example teach the skills parametric RAG relies on:

* reading comprehension — the answer is in the context, among distractor passages;
* multi-hop reading — a person's passage and their mentor's passage are both in context;
* passage language modelling — plain passages about the fixed training population;
* closed-book recall — questions about that same population, whose facts the model only ever
  read as plain passages. This teaches it to answer from its weights, which is what lets a LoRA
  trained on a new passage make the model answer questions about it.

Reading examples use freshly drawn people every time, so their facts cannot be memorised and
the only way to answer is to read the context.

Training has two stages (see :class:`TinyRecipe`): single-passage reading alone first, so the
model learns to copy every kind of value from its context; then the full mix, with distractor
passages in the reading examples.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from fedprag.shared import prompts
from fedprag.shared.data import world
from fedprag.shared.models.tiny.recipe import TinyRecipe


def training_question(rng: random.Random, person: world.Person, attribute: str) -> tuple[str, str]:
    """A question about ``person``'s ``attribute`` in a training phrasing, and its answer."""
    templates = rng.choice(world.TRAINING_QUESTION_TEMPLATES)
    return world.ask(templates, attribute, person.name, rng), person.facts[attribute]


class Corpus:
    """Draws training examples; each ends with ``eos`` so the model learns where answers stop."""

    def __init__(self, people: list[world.Person], recipe: TinyRecipe, eos: str):
        self.people = people
        self.recipe = recipe
        self.eos = eos
        self.rng = random.Random(recipe.seed)
        self.progress = 0.0  # fraction of training done; set by the trainer, drives the curriculum
        self.kinds = ["reading", "multihop", "passage_lm", "recall"]
        self.weights = [recipe.mix_reading, recipe.mix_multihop, recipe.mix_passage_lm, recipe.mix_recall]

    def _passage(self, person: world.Person, needed: str) -> str:
        """A passage with the ``needed`` fact; early in training it holds only a few other facts."""
        ramp = min(1.0, self.progress / self.recipe.curriculum)
        others = [a for a in world.ATTRIBUTES if a != needed]
        count = len(others) if ramp >= 1 else self.rng.randint(0, round(ramp * len(others)))
        keep = self.rng.sample(others, count)
        return world.write_passage(person, self.rng, (needed, *keep))

    @property
    def reading_stage(self) -> bool:
        """Whether training is still in its first stage: single-passage reading only."""
        return self.progress < self.recipe.reading_stage

    def _context(self, gold: list[tuple[world.Person, str]]) -> list[str]:
        """The gold passages plus distractors, once both the reading stage and the curriculum are over."""
        settled = self.progress >= max(self.recipe.reading_stage, self.recipe.curriculum)
        room = self.recipe.max_context_passages - len(gold) if settled else 0
        distractors = [(world.fresh_pair(self.rng)[0], self.rng.choice(world.ATTRIBUTES))
                       for _ in range(self.rng.randint(0, room))]
        passages = [self._passage(p, needed) for p, needed in gold + distractors]
        self.rng.shuffle(passages)
        return passages

    def sample(self) -> tuple[str, str]:
        """One training example as (prompt, completion); plain passages have an empty prompt."""
        kind = "reading" if self.reading_stage else self.rng.choices(self.kinds, self.weights)[0]
        if kind == "reading":
            person, _ = world.fresh_pair(self.rng)
            attribute = self.rng.choice(world.ATTRIBUTES)
            question, answer = training_question(self.rng, person, attribute)
            return prompts.with_context(self._context([(person, attribute)]), question), prompts.completion(answer) + self.eos
        if kind == "multihop":
            person, mentor = world.fresh_pair(self.rng)
            attribute = self.rng.choice(sorted(world.MULTIHOP_TEMPLATES))
            question = world.ask(world.MULTIHOP_TEMPLATES, attribute, person.name, self.rng)
            prompt = prompts.with_context(self._context([(person, "mentor"), (mentor, attribute)]), question)
            return prompt, prompts.completion(mentor.facts[attribute]) + self.eos
        person = self.rng.choice(self.people)
        if kind == "passage_lm":
            return "", world.write_passage(person, self.rng) + self.eos
        question, answer = training_question(self.rng, person, self.rng.choice(world.ATTRIBUTES))
        return prompts.closed_book(question), prompts.completion(answer) + self.eos

    def stream(self) -> Iterator[tuple[str, str]]:
        while True:
            yield self.sample()
