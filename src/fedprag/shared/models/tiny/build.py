"""Build the built-in model: train a tokenizer, pretrain a tiny Llama, check it, cache it.

The result is an ordinary Hugging Face checkpoint directory (``config.json``, safetensors weights,
tokenizer files) that :func:`fedprag.shared.models.loading.load_causal_lm` loads like any other model.
It is cached under ``$FEDPRAG_HOME/models`` keyed by the recipe's hash, so a second build is free.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from fedprag.shared import prompts
from fedprag.shared.data import world
from fedprag.shared.data.benchmark import training_people
from fedprag.shared.io import atomic_dir
from fedprag.shared.log import configure as configure_log
from fedprag.shared.log import get_logger
from fedprag.shared.metrics import exact_match
from fedprag.shared.models.generate import generate_answers
from fedprag.shared.models.tiny import numerics
from fedprag.shared.models.tiny.batches import collate, cosine_lr, train_step
from fedprag.shared.models.tiny.corpus import Corpus
from fedprag.shared.models.tiny.finish import finish
from fedprag.shared.models.tiny.recipe import TinyFinish, TinyRecipe, model_name
from fedprag.shared.models.tiny.shipped import shipped_model
from fedprag.shared.paths import fedprag_home

EOS = "<|endoftext|>"
PAD = "<|pad|>"
_STAGE = "stage.pickle"  # what the build hands its child process: the recipe, base and progress flag
log = get_logger(__name__)


def cached_path(recipe: TinyRecipe | TinyFinish, cache_root: Path | None = None) -> Path:
    """Where the model for ``recipe`` lives once built."""
    return (cache_root or fedprag_home() / "models") / model_name(recipe)


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts`` (never an unknown token)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD)


def _model_config(recipe: TinyRecipe, tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=recipe.hidden_size, num_hidden_layers=recipe.layers,
        num_attention_heads=recipe.heads, num_key_value_heads=recipe.heads,
        intermediate_size=recipe.intermediate_size, max_position_embeddings=recipe.max_positions,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _length_bucketed(corpus: Corpus, batch_size: int, pool_batches: int = 8) -> Iterator[list[tuple[str, str]]]:
    """Batches of examples of similar length (less padding), in shuffled order."""
    rng = random.Random(corpus.recipe.seed)
    stream = corpus.stream()
    while True:
        pool = sorted((next(stream) for _ in range(batch_size * pool_batches)), key=lambda e: len(e[0]) + len(e[1]))
        chunks = [pool[i:i + batch_size] for i in range(0, len(pool), batch_size)]
        rng.shuffle(chunks)
        yield from chunks


def pretrain(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, corpus: Corpus,
             recipe: TinyRecipe, show_progress: bool = True) -> float:
    """Train with the loss on every token plus the loss on the answer; returns the final loss."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay, betas=(0.9, 0.95))
    batches = _length_bucketed(corpus, recipe.batch_size)
    model.train()
    smoothed = float("nan")
    bar = tqdm(range(recipe.steps), desc=f"pretrain tiny-{recipe.name}", disable=not show_progress, unit="step")
    for step in bar:
        corpus.progress = step / recipe.steps
        batch = collate(tokenizer, next(batches), recipe.max_positions)
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(recipe.lr, step, recipe.steps, recipe.warmup_steps)
        loss = train_step(model, optimizer, batch)
        smoothed = loss if math.isnan(smoothed) else 0.95 * smoothed + 0.05 * loss
        bar.set_postfix(loss=f"{smoothed:.3f}")
    model.eval()
    return smoothed


def held_out_check(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, people: int = 40) -> dict[str, float]:
    """Exact match on never-seen people: with their passage in context, with it among two other
    people's passages, and without it.

    Besides the three overall figures it reports each per attribute (``em_with_passage_<attribute>``,
    ``em_with_distractors_<attribute>``, ``em_closed_book_<attribute>``): a small model learns to
    read one kind of value at a time, so the overall figure alone hides which facts it cannot yet
    copy from its context.
    """
    rng = random.Random(7)
    reserved = frozenset(p.name for p in training_people())
    population = world.make_people(7, people, reserved)
    questions, answers, passages, attributes, owners = [], [], [], [], []
    for person in population:
        passage = world.write_passage(person, rng)
        for attribute in world.ATTRIBUTES:
            questions.append(world.ask(world.TEST_TEMPLATES, attribute, person.name, rng))
            answers.append(person.facts[attribute])
            passages.append(passage)
            attributes.append(attribute)
            owners.append(person)
    crowded = []
    for passage, question, owner in zip(passages, questions, owners):
        others = [world.write_passage(p, rng) for p in rng.sample(population, 3) if p is not owner][:2]
        context = [passage, *others]
        rng.shuffle(context)
        crowded.append(prompts.with_context(context, question))
    result = {}
    for condition, texts in (
        ("em_with_passage", [prompts.with_context([p], q) for p, q in zip(passages, questions)]),
        ("em_with_distractors", crowded),
        ("em_closed_book", [prompts.closed_book(q) for q in questions]),
    ):
        predictions = []
        for start in range(0, len(texts), 64):
            predictions += generate_answers(model, tokenizer, texts[start:start + 64])
        hits = [exact_match(p, [a]) for p, a in zip(predictions, answers)]
        result[condition] = sum(hits) / len(hits)
        for attribute in world.ATTRIBUTES:
            mine = [h for h, a in zip(hits, attributes) if a == attribute]
            result[f"{condition}_{attribute}"] = sum(mine) / len(mine)
    return result


def build_tiny(recipe: TinyRecipe | TinyFinish, cache_root: Path | None = None, show_progress: bool = True) -> Path:
    """Return the cached model directory for ``recipe``, training it first if needed.

    A :class:`TinyFinish` recipe builds (or reuses) its base recipe's model first, then trains
    its finishing stages from it. Each stage trains in a fresh Python process started under the
    recipe's numerics (:mod:`~fedprag.shared.models.tiny.numerics`): torch and MKL choose their
    kernels once per process, and the choice decides the weights' bytes.
    """
    target = cached_path(recipe, cache_root)
    if (target / "recipe.json").is_file():
        return target
    base = None
    if isinstance(recipe, TinyFinish):
        base = shipped_model(recipe.base) or build_tiny(recipe.base, cache_root, show_progress)
    with atomic_dir(target) as tmp:
        (tmp / _STAGE).write_bytes(pickle.dumps((recipe, base, show_progress)))
        child = subprocess.run([sys.executable, "-m", "fedprag.shared.models.tiny.build", str(tmp)], check=False,
                               env={**os.environ, **numerics.environment(recipe.numerics)})
        if child.returncode != 0:
            raise RuntimeError(f"building {target.name} failed (exit {child.returncode}); its log is above")
        (tmp / _STAGE).unlink()
    log.info("tiny.build.done", recipe=recipe.name, path=str(target), numerics=recipe.numerics,
             **json.loads((target / "metrics.json").read_text()))
    return target


def train_stage(recipe: TinyRecipe | TinyFinish, base: Path | None, out: Path, show_progress: bool = True) -> None:
    """Train ``recipe``'s own stage (from the model at ``base`` for a finish), check it, and write
    the checkpoint, its metrics and its recipe into ``out``. Runs in the build's child process."""
    numerics.apply(recipe.numerics)
    started = time.perf_counter()
    people = training_people()
    if isinstance(recipe, TinyFinish):
        model = LlamaForCausalLM.from_pretrained(base)
        tokenizer = PreTrainedTokenizerFast.from_pretrained(base)
        log.info("tiny.finish.start", recipe=recipe.name, base=base.name)
        final_loss = finish(model, tokenizer, people, recipe, EOS, show_progress)
    else:
        torch.manual_seed(recipe.seed)
        tokenizer_corpus = Corpus(people, recipe, EOS)
        tokenizer_corpus.progress = 1.0  # the finished mix: every kind of text the model will see
        tokenizer = train_tokenizer(["".join(tokenizer_corpus.sample()) for _ in range(4000)], recipe.vocab_size)
        model = LlamaForCausalLM(_model_config(recipe, tokenizer))
        log.info("tiny.build.start", recipe=recipe.name, parameters=sum(p.numel() for p in model.parameters()))
        final_loss = pretrain(model, tokenizer, Corpus(people, recipe, EOS), recipe, show_progress)
    metrics = {"final_loss": final_loss, **held_out_check(model, tokenizer),
               "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
               "build_seconds": time.perf_counter() - started}
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "recipe.json").write_text(json.dumps(recipe.describe(), indent=2))


if __name__ == "__main__":  # the build's child process: python -m fedprag.shared.models.tiny.build STAGE_DIR
    configure_log()
    stage_dir = Path(sys.argv[1])
    stage_recipe, stage_base, progress = pickle.loads((stage_dir / _STAGE).read_bytes())
    train_stage(stage_recipe, stage_base, stage_dir, progress)
