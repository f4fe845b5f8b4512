"""The finishing stages of the built-in model: teach a reader to pick the right passage.

A model built by :func:`fedprag.shared.models.tiny.build.pretrain` reads one passage well but, with
distractor passages beside it, picks a person's passage at about chance. Two more stages, trained
from it, fix most of that (docs/design.md's reading skills; figures in :class:`TinyFinish`):

1. **Drill.** Every example is the name-lookup drill: sentences about 2–6 freshly drawn people
   all state the same attribute, so only the asked-about name tells them apart. The loss is on the
   answer only. A small model learns this only after a plateau (about 1,200 steps here).
2. **Mix.** Reading with one or two distractor passages, the drill, plain passages about the
   fixed training population and closed-book questions about it, with the loss on every token
   plus the answer; the last two keep the recall that LoRA encodings rely on.

Both stages use a fresh optimizer and a fresh seeded example stream, and a constant learning rate
unless the recipe decays it. A recipe may finish another finished model: the default model is
three decayed mix stages (no drill) on top of the first finish.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import torch
from tqdm.auto import tqdm
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from fedprag.shared import prompts
from fedprag.shared.data import world
from fedprag.shared.models.tiny.batches import collate, cosine_lr, train_step
from fedprag.shared.models.tiny.corpus import training_question
from fedprag.shared.models.tiny.recipe import TinyFinish

Example = tuple[str, str]


class FinishingExamples:
    """The seeded example stream of the finishing stages (prompt, completion ending in ``eos``)."""

    def __init__(self, people: list[world.Person], recipe: TinyFinish, eos: str):
        self.people = people
        self.recipe = recipe
        self.eos = eos
        self.rng = random.Random(recipe.seed)

    def reading(self, distractors: int) -> Example:
        """A fresh person's passage among ``distractors`` other fresh people's passages."""
        person, _ = world.fresh_pair(self.rng)
        attribute = self.rng.choice(world.ATTRIBUTES)
        passages = [world.write_passage(person, self.rng)]
        passages += [world.write_passage(world.fresh_pair(self.rng)[0], self.rng) for _ in range(distractors)]
        self.rng.shuffle(passages)
        question, answer = training_question(self.rng, person, attribute)
        return prompts.with_context(passages, question), prompts.completion(answer) + self.eos

    def lookup(self) -> Example:
        """The drill: one sentence each about 2–6 fresh people, all on the same attribute."""
        people = [world.fresh_pair(self.rng)[0] for _ in range(self.rng.randint(2, 6))]
        attribute = self.rng.choice(world.ATTRIBUTES)
        sentences = [world.write_passage(p, self.rng, (attribute,)) for p in people]
        self.rng.shuffle(sentences)
        question, answer = training_question(self.rng, people[0], attribute)
        return prompts.with_context([" ".join(sentences)], question), prompts.completion(answer) + self.eos

    def writing(self) -> Example:
        """Writing encoding data: a training person's passage on some of their facts, then a
        paraphrase of it sentence by sentence and one question per fact in the passage's order.

        Questions use only the augmentation phrasings (never a test or held-out one). Passages
        state a random subset of facts, so the model must read which facts to ask about rather
        than recall the person."""
        person = self.rng.choice(self.people)
        attributes = self.rng.sample(world.ATTRIBUTES, self.rng.randint(2, len(world.ATTRIBUTES)))
        passage = " ".join(world.state(person, a, self.rng) for a in attributes)
        rewrite = " ".join(world.state(person, a, self.rng) for a in attributes)
        qa = [(world.ask(world.AUGMENT_TEMPLATES, a, person.name, self.rng), person.facts[a]) for a in attributes]
        return prompts.augment_request(passage), prompts.augment_completion(rewrite, qa) + self.eos

    def mixed(self) -> Example:
        """One example of the mix stage, drawn by the recipe's shares."""
        recipe, draw = self.recipe, self.rng.random()
        if draw < recipe.mix_reading:
            return self.reading(self.rng.randint(1, 2))
        if draw < recipe.mix_reading + recipe.mix_lookup:
            return self.lookup()
        if draw < recipe.mix_reading + recipe.mix_lookup + recipe.mix_writing:
            return self.writing()
        person = self.rng.choice(self.people)
        if draw < recipe.mix_reading + recipe.mix_lookup + recipe.mix_writing + recipe.mix_passage_lm:
            return "", world.write_passage(person, self.rng) + self.eos
        question, answer = training_question(self.rng, person, self.rng.choice(world.ATTRIBUTES))
        return prompts.closed_book(question), prompts.completion(answer) + self.eos


def _train_stage(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, sample: Callable[[], Example],
                 steps: int, lr: float, answer_only: bool, recipe: TinyFinish, desc: str, show_progress: bool) -> float:
    """AdamW on ``steps`` batches from ``sample`` at a constant rate, or decayed along a cosine when
    the recipe says ``decay``; returns the smoothed final loss."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    model.train()
    smoothed = float("nan")
    for step in (bar := tqdm(range(steps), desc=desc, disable=not show_progress, unit="step")):
        if recipe.decay:
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(lr, step, steps)
        batch = collate(tokenizer, [sample() for _ in range(recipe.batch_size)], recipe.max_length)
        loss = train_step(model, optimizer, batch, answer_only)
        smoothed = loss if math.isnan(smoothed) else 0.95 * smoothed + 0.05 * loss
        bar.set_postfix(loss=f"{smoothed:.3f}")
    model.eval()
    return smoothed


def finish(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, people: list[world.Person],
           recipe: TinyFinish, eos: str, show_progress: bool = True) -> float:
    """Run the drill stage (unless it has no steps), then the mix stage, each on its own fresh
    stream; returns the final loss."""
    model.requires_grad_(True)
    if recipe.drill_steps:
        drill = FinishingExamples(people, recipe, eos)
        _train_stage(model, tokenizer, drill.lookup, recipe.drill_steps, recipe.drill_lr, True, recipe,
                     f"drill tiny-{recipe.name}", show_progress)
    mix = FinishingExamples(people, recipe, eos)
    return _train_stage(model, tokenizer, mix.mixed, recipe.mix_steps, recipe.mix_lr, False, recipe,
                        f"mix tiny-{recipe.name}", show_progress)
