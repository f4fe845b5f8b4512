"""Train the generator by distilling standard RAG, and turn documents into adapters with it.

Teacher: the frozen base model with the real documents in context. Student: the same model with
each document token replaced by the mask token, plus the LoRA the generator made from those
documents. Both sequences are built segment by segment, so they have the same length and every
token after the documents (the answer cue and the answer) sits at the same position in both. The
loss is

    gen_weight·L_gen + cos_weight·L_cos + kl_weight·L_KL

over the answer cue and the answer (the question comes first, so it is identical in both): the
student's answer cross-entropy; 1−cosine between student and teacher hidden states, weighted
towards deeper layers; and the KL from the teacher's answer distribution at ``temperature``
(times T²).

Training examples are synthesised from documents about freshly drawn fictional people, never the
benchmark's, so evaluation documents are unseen: one document (sometimes followed by distractor
documents) with several augmentation-template questions about it, which share one generated LoRA,
or (``pair_share``) a person's and their mentor's documents with a question that needs both. Test
and held-out single-hop phrasings stay unseen.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm
from transformers.modeling_outputs import CausalLMOutputWithPast

from fedprag.shared import prompts
from fedprag.shared.data import world
from fedprag.shared.data.schema import Augmentation, Passage
from fedprag.shared.log import get_logger
from fedprag.shared.lora.layers import Adapter, LoRALinear, LowRank, applied
from fedprag.shared.methods.distilled.config import DistilledConfig
from fedprag.shared.methods.distilled.layers import (
    MASK_TOKEN,
    Generator,
    add_mask_token,
    draw_mask_vector,
    install_mask_embedding,
)
from fedprag.shared.models.loading import BaseModel

log = get_logger(__name__)


@dataclass
class Example:
    """Documents, a question that needs them, and its answer."""

    documents: list[str]
    question: str
    answer: str


@dataclass
class DistilledEncoder:
    """A base model with the mask token installed, its adapted layers, and the generator."""

    base: BaseModel
    layers: dict[str, LoRALinear]
    generator: Generator
    mask_id: int
    mask_vector: Tensor

    @classmethod
    def attach(cls, base: BaseModel, layers: dict[str, LoRALinear], generator: Generator,
               mask_vector: Tensor) -> DistilledEncoder:
        """Install the mask token in ``base`` and bind the generator to it."""
        mask_id = add_mask_token(base.tokenizer)
        install_mask_embedding(base.model, mask_id, mask_vector)
        return cls(base, layers, generator, mask_id, mask_vector)

    def ids(self, text: str) -> list[int]:
        return self.base.tokenizer(text, add_special_tokens=False)["input_ids"]

    def read(self, documents: Sequence[Sequence[str]]) -> tuple[Tensor, Tensor]:
        """Each row's documents, joined as in the prompt, as frozen base-model states per token:
        the input embedding and the last hidden state, concatenated.

        Documents longer than ``max_doc_tokens`` are truncated with a warning.
        """
        limit = self.generator.config.max_doc_tokens
        rows = []
        for docs in documents:
            ids = self.ids("\n".join(docs))
            if len(ids) > limit:
                log.warning("distilled.documents.truncated", tokens=len(ids), kept=limit)
                ids = ids[:limit]
            rows.append(ids or [self.base.tokenizer.eos_token_id])
        ids, mask = _right_padded(rows, self.base.tokenizer.pad_token_id)
        with torch.no_grad(), applied(self.layers, None):
            out = self.base.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        return torch.cat([out.hidden_states[0], out.hidden_states[-1]], -1), mask

    def adapters(self, documents: Sequence[Sequence[str]]) -> Adapter:
        """One generated LoRA per row of documents, batched (``A [b, r, in]``, ``B [b, out, r]``)."""
        return self.generator(*self.read(documents))

    def encode(self, texts: Sequence[str], batch_size: int = 16) -> list[Adapter]:
        """Each passage's own LoRA, one generator forward per ``batch_size`` passages: what adding
        passages costs (no gradients)."""
        with torch.no_grad():
            return [self.adapters([[t] for t in texts[s:s + batch_size]]) for s in range(0, len(texts), batch_size)]

    def masked_prompt(self, documents: Sequence[str], question: str) -> str:
        """The student's prompt: standard RAG's, with each document token replaced by the mask token."""
        return prompts.with_context([MASK_TOKEN * len(self.ids(d)) for d in documents], question)

    def pair(self, example: Example) -> tuple[list[int], list[int], int, int]:
        """Teacher and student ids for one example, plus where the answer cue and the answer start.

        Both sequences are built segment by segment (question, documents, answer cue, answer), so
        every position after the documents lines up between teacher and student.
        """
        teacher = self.ids(prompts.context_header(example.question))
        student = list(teacher)
        for i, doc in enumerate(example.documents):
            sep = self.ids("\n") if i else []
            doc_ids = self.ids(doc)
            teacher += sep + doc_ids
            student += sep + [self.mask_id] * len(doc_ids)
        cue = self.ids(prompts.ANSWER_CUE)
        answer = self.ids(prompts.completion(example.answer)) + [self.base.tokenizer.eos_token_id]
        cue_start = len(teacher)
        return teacher + cue + answer, student + cue + answer, cue_start, cue_start + len(cue)


def _right_padded(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    return ids, mask


def synthesise(rng: random.Random, config: DistilledConfig) -> list[Example]:
    """Training examples about freshly drawn people that share one set of documents.

    With probability ``pair_share``: a person's and their mentor's documents, in random order, and
    one question that needs both. Otherwise: one person's document, followed with probability
    ``distractor_share`` by one or two other people's (as in a retrieved top-k, where the best
    match comes first), and ``questions_per_document`` questions on different attributes of it.
    """
    person, mentor = world.fresh_pair(rng)
    if rng.random() < config.pair_share:
        attribute = rng.choice(sorted(world.MULTIHOP_TEMPLATES))
        docs = [world.write_passage(person, rng), world.write_passage(mentor, rng)]
        rng.shuffle(docs)
        return [Example(docs, world.ask(world.MULTIHOP_TEMPLATES, attribute, person.name, rng), mentor.facts[attribute])]
    docs = [world.write_passage(person, rng)]
    if rng.random() < config.distractor_share:
        docs += [world.write_passage(world.fresh_pair(rng)[0], rng) for _ in range(rng.choice((1, 2)))]
    attributes = rng.sample(world.ATTRIBUTES, min(config.questions_per_document, len(world.ATTRIBUTES)))
    return [Example(docs, world.ask(world.AUGMENT_TEMPLATES, a, person.name, rng), person.facts[a]) for a in attributes]


Sampler = Callable[[random.Random], list[Example]]
"""Draws one document set and the examples (questions with answers) that share its LoRA."""


def synthetic_sampler(config: DistilledConfig) -> Sampler:
    """Examples about freshly drawn fictional people (:func:`synthesise`): the generator's pretraining."""
    return lambda rng: synthesise(rng, config)


def document_sampler(documents: Sequence[Passage], augmentations: Mapping[str, Augmentation],
                     config: DistilledConfig) -> Sampler:
    """Examples from an owner's own documents: one passage, followed with probability
    ``distractor_share`` by one or two of the owner's other passages, and up to
    ``questions_per_document`` of its QA pairs (its augmentation), which share one LoRA.

    Passages without QA pairs are left out; with none left this refuses (nothing to distil on).
    """
    usable = [p for p in documents if augmentations.get(p.passage_id) and augmentations[p.passage_id].qa]
    if not usable:
        raise ValueError("distillation needs passages with QA pairs; none of these have any")

    def sample(rng: random.Random) -> list[Example]:
        passage = rng.choice(usable)
        docs = [passage.text]
        if len(usable) > 1 and rng.random() < config.distractor_share:
            others = [p for p in rng.sample(usable, min(3, len(usable))) if p is not passage]
            docs += [p.text for p in others[:rng.choice((1, 2))]]
        qa = augmentations[passage.passage_id].qa
        return [Example(docs, q, a) for q, a in rng.sample(list(qa), min(config.questions_per_document, len(qa)))]

    return sample


def _batch(rng: random.Random, config: DistilledConfig,
           sample: Sampler) -> tuple[list[list[str]], list[Example], Tensor]:
    """``batch_size`` examples, their distinct document sets, and each example's document set."""
    documents: list[list[str]] = []
    examples: list[Example] = []
    owners: list[int] = []
    while len(examples) < config.batch_size:
        group = sample(rng)[:config.batch_size - len(examples)]
        owners += [len(documents)] * len(group)
        documents.append(group[0].documents)
        examples += group
    return documents, examples, torch.tensor(owners)


def _rows(adapter: Adapter, index: Tensor) -> Adapter:
    """The adapter with its batch rows picked by ``index`` (one generated LoRA, several questions)."""
    return {name: LowRank(d.A[index], d.B[index], d.scale) for name, d in adapter.items()}


def distillation_loss(student: CausalLMOutputWithPast, teacher: CausalLMOutputWithPast, ids: Tensor,
                      cue_mask: Tensor, answer_mask: Tensor, config: DistilledConfig) -> tuple[Tensor, dict[str, float]]:
    """The weighted sum of L_gen, L_cos and L_KL (see the module docstring) and its parts."""
    predicts = answer_mask[:, 1:].bool()  # logits at t predict the token at t+1
    s_logits, t_logits = student.logits[:, :-1][predicts], teacher.logits[:, :-1][predicts]
    gen = F.cross_entropy(s_logits, ids[:, 1:][predicts])
    temp = config.temperature
    kl = F.kl_div(F.log_softmax(s_logits / temp, -1), F.log_softmax(t_logits / temp, -1), log_target=True,
                  reduction="batchmean") * temp ** 2
    depth = len(student.hidden_states) - 1
    weights = torch.arange(1, depth + 1, dtype=torch.float32) / sum(range(1, depth + 1))
    where = (cue_mask | answer_mask).bool()
    cos = sum(w * (1 - F.cosine_similarity(s[where], t[where], dim=-1)).mean()
              for w, s, t in zip(weights, student.hidden_states[1:], teacher.hidden_states[1:]))
    loss = config.gen_weight * gen + config.cos_weight * cos + config.kl_weight * kl
    return loss, {"gen": gen.item(), "cos": float(cos.detach()), "kl": kl.item()}


@dataclass(frozen=True)
class Schedule:
    """How long and how fast :func:`distil` trains: ``steps`` at ``lr``, decayed by cosine to a
    tenth when ``decay``; ``anchor`` and ``proximal_mu`` add FedProx's ``μ/2·‖θ − anchor‖²``."""

    steps: int
    lr: float
    decay: bool = True
    proximal_mu: float = 0.0
    anchor: tuple[Tensor, ...] = ()


def distil(encoder: DistilledEncoder, sample: Sampler, schedule: Schedule, rng: random.Random,
           show_progress: bool = True) -> float:
    """Train ``encoder``'s generator in place on examples from ``sample``; returns the mean loss.

    The teacher reads the documents, the student their mask tokens plus the generated LoRA; the
    loss is :func:`distillation_loss`. A fresh AdamW per call: a site keeps no optimiser state
    between rounds.
    """
    base, layers, generator, config = encoder.base, encoder.layers, encoder.generator, encoder.generator.config
    optimizer = torch.optim.AdamW(generator.parameters(), lr=schedule.lr, weight_decay=0.01)
    total, smoothed = 0.0, float("nan")
    generator.train()
    bar = tqdm(range(schedule.steps), desc="distil generator", disable=not show_progress, unit="step")
    for step in bar:
        if schedule.decay:
            for group in optimizer.param_groups:  # cosine decay to a tenth
                group["lr"] = schedule.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * step / schedule.steps)))
        documents, examples, owners = _batch(rng, config, sample)
        pairs = [encoder.pair(e) for e in examples]
        pad = base.tokenizer.pad_token_id
        teacher_ids, attention = _right_padded([p[0] for p in pairs], pad)
        student_ids, _ = _right_padded([p[1] for p in pairs], pad)
        positions = torch.arange(teacher_ids.shape[1])
        cue_mask = torch.stack([(positions >= c) & (positions < a) for _, _, c, a in pairs]) & attention.bool()
        answer_mask = torch.stack([positions >= a for _, _, _, a in pairs]) & attention.bool()
        with torch.no_grad(), applied(layers, None):
            teacher = base.model(input_ids=teacher_ids, attention_mask=attention, output_hidden_states=True)
        with applied(layers, _rows(encoder.adapters(documents), owners)):
            student = base.model(input_ids=student_ids, attention_mask=attention, output_hidden_states=True)
        loss, parts = distillation_loss(student, teacher, student_ids, cue_mask, answer_mask, config)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"distillation loss is {loss.item()} at step {step}")
        total += loss.item()
        if schedule.proximal_mu > 0:
            loss = loss + schedule.proximal_mu / 2 * sum((p - a).pow(2).sum()
                                                         for p, a in zip(generator.parameters(), schedule.anchor))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(generator.parameters(), 1.0)
        optimizer.step()
        smoothed = parts["gen"] if math.isnan(smoothed) else 0.95 * smoothed + 0.05 * parts["gen"]
        bar.set_postfix(gen=f"{smoothed:.3f}")
    generator.eval()
    return total / max(schedule.steps, 1)


def new_encoder(base: BaseModel, layers: dict[str, LoRALinear], config: DistilledConfig) -> DistilledEncoder:
    """A generator for ``base`` initialised from ``config.seed`` (the process's own random state is
    left as it was), with the mask token installed."""
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        generator = Generator(layers, base.model.config.hidden_size, config)
    return DistilledEncoder.attach(base, layers, generator, draw_mask_vector(base.model, config.seed))


def train_generator(base: BaseModel, layers: dict[str, LoRALinear], config: DistilledConfig,
                    show_progress: bool = True) -> tuple[DistilledEncoder, float]:
    """Pretrain a generator for ``base`` from scratch on synthetic documents; returns the encoder
    and its mean training loss."""
    encoder = new_encoder(base, layers, config)
    loss = distil(encoder, synthetic_sampler(config), Schedule(config.steps, config.lr), random.Random(config.seed),
                  show_progress)
    log.info("distilled.train.done", steps=config.steps, mean_loss=round(loss, 4))
    return encoder, loss
