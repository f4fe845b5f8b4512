"""Encode passages the Poly-PRAG way, and train the learned query router.

* :func:`train_pool` — offline encoding: multi-task training of the shared expert pool and every
  passage's routing row over all passages' augmentation. Each batch row is one passage's
  sequence and runs under that passage's sampled mixture.
* :func:`encode_incremental` — "Poly-z": new passages get routing rows trained with the pool
  frozen, so a site adds passages without retraining (or even changing) the experts.
* :func:`train_query_router` — maps a question's embedding to the routing of its passage.

A passage's training data is its text and rewrite as plain language modelling, plus every
augmentation QA pair asked *without* the passage (docs/design.md §5: that is what makes facts come
out of the weights, not only out of the context).

A pool on the last layer only (``poly.layers = "last"``) trains on the answers of those QA pairs
alone, from the states entering the last layer's FFN (:func:`answer_states`), which the routing
cannot change: the base model runs over each pair once, and every step after that costs one FFN
and the LM head per answer token (:func:`last_layer_logits`).
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fedprag.shared import prompts
from fedprag.shared.data.schema import Augmentation, Passage
from fedprag.shared.log import get_logger
from fedprag.shared.lora.layers import LoRALinear, LowRank, applied
from fedprag.shared.lora.objective import per_sequence_loss
from fedprag.shared.methods.poly.config import PolyConfig
from fedprag.shared.methods.poly.layers import (
    ExpertPool,
    QueryRouter,
    RoutingTable,
    placed,
    routing_weights,
)
from fedprag.shared.models.loading import BaseModel

log = get_logger(__name__)


class EncodingHealthError(RuntimeError):
    """Training produced non-finite weights; the encoding is unusable."""


def training_texts(passage: str, augmentation: Augmentation, eos: str) -> list[str]:
    """One passage's sequences: the passage, its rewrite, and each QA pair closed-book."""
    texts = [passage, augmentation.rewrite]
    texts += [prompts.closed_book(q) + prompts.completion(a) for q, a in augmentation.qa]
    return [t + eos for t in texts]


def _samples(passages: Sequence[Passage], augmentations: Mapping[str, Augmentation], eos: str) -> list[tuple[int, str]]:
    return [(row, text) for row, p in enumerate(passages)
            for text in training_texts(p.text, augmentations[p.passage_id], eos)]


def _length_bucketed(samples: list[tuple[int, str]], batch_size: int, rng: random.Random,
                     pool_batches: int = 8) -> list[list[tuple[int, str]]]:
    """One epoch of batches in random order, each of similar-length texts (less padding)."""
    order = rng.sample(samples, len(samples))
    batches = []
    for start in range(0, len(order), batch_size * pool_batches):
        pool = sorted(order[start:start + batch_size * pool_batches], key=lambda s: len(s[1]))
        batches += [pool[i:i + batch_size] for i in range(0, len(pool), batch_size)]
    rng.shuffle(batches)
    return batches


@dataclass(frozen=True)
class _Batch:
    """One training step's data: the passage row of each batch row, and its loss under an adapter."""

    rows: torch.Tensor
    loss: Callable[[dict[str, LowRank]], torch.Tensor]


def _run_epochs(pool: ExpertPool, logits: torch.Tensor, schedule: Sequence[Sequence[_Batch]],
                optimizer: torch.optim.Optimizer, config: PolyConfig, desc: str, show_progress: bool,
                sampled: bool = True) -> float:
    """Shared loop of every encoder: each batch's rows run under their passages' mixtures, sampled
    (relaxed Bernoulli) or, with ``sampled`` False, the inference-time weights."""
    generator = torch.Generator().manual_seed(config.seed)
    smoothed = float("nan")
    trainable = any(p.requires_grad for p in pool.parameters())
    anchor = [p.detach().clone() for p in pool.parameters()] if trainable and config.proximal_mu > 0 else None
    with tqdm(total=sum(map(len, schedule)), desc=desc, unit="step", disable=not show_progress) as bar:
        for epoch in schedule:
            for batch in epoch:
                if config.uniform:
                    weights = torch.full((len(batch.rows), pool.n_groups, pool.n_experts), 1.0 / pool.n_experts)
                else:
                    weights = routing_weights(logits[batch.rows], sampled, config.temperature, generator)
                loss = batch.loss(pool.adapter(weights))
                if anchor is not None:  # FedProx: stay near the broadcast pool
                    loss = loss + config.proximal_mu / 2 * sum(((p - a) ** 2).sum() for p, a in zip(pool.parameters(), anchor))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                smoothed = loss.item() if math.isnan(smoothed) else 0.9 * smoothed + 0.1 * loss.item()
                bar.set_postfix(loss=f"{smoothed:.3f}")
                bar.update(1)
    return smoothed


def _sequence_schedule(base: BaseModel, layers: Mapping[str, LoRALinear], samples: list[tuple[int, str]],
                       epochs: int, batch_size: int, seed: int) -> list[list[_Batch]]:
    """Whole-model training: batches of whole sequences, next-token loss on every token."""
    tokenizer = base.tokenizer
    tokenizer.padding_side = "right"

    def batch(chunk: list[tuple[int, str]]) -> _Batch:
        def loss(adapter: dict[str, LowRank]) -> torch.Tensor:
            encoded = tokenizer([t for _, t in chunk], return_tensors="pt", padding=True)
            with applied(layers, adapter):
                out = base.model(**encoded).logits
            return per_sequence_loss(out, encoded["input_ids"], encoded["attention_mask"]).mean()
        return _Batch(torch.tensor([r for r, _ in chunk]), loss)

    rng = random.Random(seed)
    return [[batch(chunk) for chunk in _length_bucketed(samples, batch_size, rng)] for _ in range(epochs)]


class AnswerStates(NamedTuple):
    """The base model's residual stream entering the last layer's FFN, at every answer-token position.

    Position ``i`` predicts ``targets[i]`` (an answer token, or the end-of-text after it) of a QA
    pair of passage row ``rows[i]``; the positions of QA pair ``j`` are ``starts[j]:starts[j + 1]``.
    """

    hidden: torch.Tensor  # [N, d]
    targets: torch.Tensor  # [N]
    rows: torch.Tensor  # [N]
    starts: torch.Tensor  # [QA pairs + 1]


@torch.no_grad()
def answer_states(base: BaseModel, passages: Sequence[Passage], augmentations: Mapping[str, Augmentation],
                  batch_size: int = 256) -> AnswerStates:
    """Run every passage's closed-book QA pairs through the base model once; keep the answer states."""
    pairs = [(row, prompts.closed_book(q), prompts.completion(a) + base.tokenizer.eos_token)
             for row, p in enumerate(passages) for q, a in augmentations[p.passage_id].qa]
    tokenizer = base.tokenizer
    tokenizer.padding_side = "right"
    last = base.model.model.layers[-1]
    captured: list[torch.Tensor] = []
    hook = last.post_attention_layernorm.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0]))
    hidden, targets, rows, lengths = [], [], [], []
    try:
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            encoded = tokenizer([q + a for _, q, a in chunk], return_tensors="pt", padding=True)
            prompt_lengths = [len(ids) for ids in tokenizer([q for _, q, _ in chunk])["input_ids"]]
            captured.clear()
            base.model.model(**encoded)
            for i, (row, _, _) in enumerate(chunk):
                end = int(encoded["attention_mask"][i].sum()) - 1
                positions = torch.arange(prompt_lengths[i] - 1, end)
                hidden.append(captured[0][i, positions])
                targets.append(encoded["input_ids"][i, positions + 1])
                rows.append(torch.full((len(positions),), row))
                lengths.append(len(positions))
    finally:
        hook.remove()
    starts = torch.tensor([0, *lengths]).cumsum(0)
    return AnswerStates(torch.cat(hidden), torch.cat(targets), torch.cat(rows), starts)


def last_layer_logits(base: BaseModel, hidden: torch.Tensor) -> torch.Tensor:
    """Next-token logits from states entering the last layer's FFN: that FFN (with whatever
    adapter is applied), the final norm and the LM head. ``hidden`` is ``[N, d]``, one position each."""
    decoder = base.model.model
    last = decoder.layers[-1]
    h = hidden[:, None, :]
    h = h + last.mlp(last.post_attention_layernorm(h))
    return base.model.lm_head(decoder.norm(h))[:, 0]


def _answer_schedule(base: BaseModel, layers: Mapping[str, LoRALinear], states: AnswerStates, epochs: int,
                     batch_size: int, seed: int) -> list[list[_Batch]]:
    """Last-layer training: batches of ``batch_size`` QA pairs' answer positions, cross-entropy on the answer."""
    generator = torch.Generator().manual_seed(seed)

    def batch(pairs: torch.Tensor) -> _Batch:
        index = torch.cat([torch.arange(states.starts[j], states.starts[j + 1]) for j in pairs.tolist()])

        def loss(adapter: dict[str, LowRank]) -> torch.Tensor:
            with applied(layers, adapter):
                return F.cross_entropy(last_layer_logits(base, states.hidden[index]), states.targets[index])
        return _Batch(states.rows[index], loss)

    n_pairs = len(states.starts) - 1
    return [[batch(chunk) for chunk in torch.randperm(n_pairs, generator=generator).split(batch_size)]
            for _ in range(epochs)]


def _schedule(base: BaseModel, layers: Mapping[str, LoRALinear], passages: Sequence[Passage],
              augmentations: Mapping[str, Augmentation], config: PolyConfig, epochs: int,
              batch_size: int) -> tuple[list[list[_Batch]], int]:
    """The training batches for ``config.layers``, and how many sequences one epoch holds."""
    if config.layers == "last":
        states = answer_states(base, passages, augmentations)
        return _answer_schedule(base, layers, states, epochs, batch_size, config.seed), len(states.starts) - 1
    samples = _samples(passages, augmentations, base.tokenizer.eos_token)
    return _sequence_schedule(base, layers, samples, epochs, batch_size, config.seed), len(samples)


class TrainedPool(NamedTuple):
    pool: ExpertPool
    routing: RoutingTable
    loss: float  # smoothed training loss at the end
    sequences: int  # training sequences seen, over all epochs


def train_pool(base: BaseModel, layers: Mapping[str, LoRALinear], passages: Sequence[Passage],
               augmentations: Mapping[str, Augmentation], config: PolyConfig, show_progress: bool = True,
               start: tuple[ExpertPool, torch.Tensor] | None = None) -> TrainedPool:
    """Train the expert pool and one routing row per passage, jointly.

    Offline encoding starts from a fresh pool and near-zero routing; a federated round passes
    ``start`` (the broadcast pool and the site's own routing logits) to continue from them.
    """
    config.validate()
    torch.manual_seed(config.seed)
    if start is None:
        modules = placed(layers, config.layers, config.targets)
        pool = ExpertPool.initialised(modules, config.n_experts, config.rank, config.scale, config.routing, config.seed)
        # near-zero, but not equal, so the experts' symmetry breaks from the start
        initial = torch.empty(len(passages), pool.n_groups, config.n_experts).normal_(
            0.0, 0.01, generator=torch.Generator().manual_seed(config.seed))
    else:
        pool, initial = start
        if initial.shape != (len(passages), pool.n_groups, pool.n_experts):
            raise ValueError(f"starting routing is {list(initial.shape)}, expected "
                             f"[{len(passages)}, {pool.n_groups}, {pool.n_experts}]")
    pool.requires_grad_(True)
    if config.freeze_a:  # FFA-LoRA: only B trains, so averaging sites' experts is exact
        pool.A.requires_grad_(False)
    logits = torch.nn.Parameter(initial.clone())
    optimizer = torch.optim.AdamW([
        {"params": [p for p in pool.parameters() if p.requires_grad], "lr": config.lr, "weight_decay": 0.0},
        {"params": [logits], "lr": config.routing_lr, "weight_decay": 0.0},
    ])
    schedule, sequences = _schedule(base, layers, passages, augmentations, config, config.epochs, config.batch_size)
    loss = _run_epochs(pool, logits, schedule, optimizer, config, "Poly-PRAG encode", show_progress)
    pool.requires_grad_(False)
    routing = RoutingTable([p.passage_id for p in passages], logits.detach().clone())
    health = check_health(pool, routing, config)
    log.info("poly.train.done", passages=len(passages), final_loss=round(loss, 4), **health.as_log())
    return TrainedPool(pool, routing, loss, sequences * config.epochs)


def encode_incremental(base: BaseModel, layers: Mapping[str, LoRALinear], pool: ExpertPool,
                       passages: Sequence[Passage], augmentations: Mapping[str, Augmentation],
                       config: PolyConfig, show_progress: bool = True) -> RoutingTable:
    """Routing rows for new passages, trained with every expert frozen (the pool is not modified)."""
    config.validate()
    frozen = [p.requires_grad for p in pool.parameters()]
    pool.requires_grad_(False)
    try:
        logits = torch.nn.Parameter(torch.zeros(len(passages), pool.n_groups, pool.n_experts))
        optimizer = torch.optim.Adam([logits], lr=config.incremental_lr)
        schedule, _ = _schedule(base, layers, passages, augmentations, config, config.incremental_epochs,
                                config.incremental_batch_size)
        _run_epochs(pool, logits, schedule, optimizer, config, "Poly-PRAG incremental", show_progress,
                    sampled=config.incremental_sampling)
    finally:
        for param, flag in zip(pool.parameters(), frozen):
            param.requires_grad_(flag)
    routing = RoutingTable([p.passage_id for p in passages], logits.detach().clone())
    check_health(pool, routing, config)
    return routing


@dataclass(frozen=True)
class RoutingHealth:
    """How passages spread over experts: a collapse means routing carries no information."""

    experts_used: int  # distinct top experts across passages
    mean_distance: float  # mean L1 distance between passages' expert weights
    collapsed: bool

    def as_log(self) -> dict[str, object]:
        return {"experts_used": self.experts_used, "routing_distance": round(self.mean_distance, 4),
                "collapsed": self.collapsed}


def check_health(pool: ExpertPool, routing: RoutingTable, config: PolyConfig) -> RoutingHealth:
    """Refuse non-finite weights; detect (and log) routing collapse onto one expert."""
    bad = [name for name in pool.names if not all(torch.isfinite(t).all() for t in pool.factors(name))]
    if bad or not torch.isfinite(routing.logits).all():
        raise EncodingHealthError(f"Poly-PRAG training diverged: non-finite values in "
                                  f"{bad[:3] if bad else 'the routing rows'}; lower poly.lr or poly.routing_lr")
    weights = routing_weights(routing.logits).flatten(1)
    top = routing_weights(routing.logits).argmax(-1)
    experts_used = len(torch.unique(top))
    distance = float(torch.cdist(weights, weights, p=1).mean()) if len(weights) > 1 else 0.0
    collapsed = not config.uniform and len(weights) > 1 and (experts_used == 1 or distance < 1e-3)
    health = RoutingHealth(experts_used, distance, collapsed)
    if collapsed:
        log.warning("poly.routing.collapsed", **health.as_log())
    return health


def train_query_router(embed: Callable[[list[str]], np.ndarray], routing: RoutingTable,
                       augmentations: Mapping[str, Augmentation], epochs: int = 200,
                       lr: float = 3e-3, seed: int = 0, start: QueryRouter | None = None) -> QueryRouter:
    """Learn question embedding → expert weights, from each passage's augmentation questions.

    The target is the passage's own inference-time routing; the loss is the cross-entropy between
    target weights and predicted weights. Only augmentation questions are used, never test ones.
    With ``start`` (a federated round), training continues from a copy of that router.
    """
    questions, targets = [], []
    target_weights = routing_weights(routing.logits)
    for row, pid in enumerate(routing.passage_ids):
        for question, _ in augmentations[pid].qa:
            questions.append(question)
            targets.append(target_weights[row])
    x = torch.from_numpy(embed(questions)).float()
    y = torch.stack(targets)
    torch.manual_seed(seed)
    router = (copy.deepcopy(start).train().requires_grad_(True) if start is not None
              else QueryRouter(x.shape[1], routing.logits.shape[1], routing.logits.shape[2]))
    optimizer = torch.optim.AdamW(router.parameters(), lr=lr)
    for _ in range(epochs):
        predicted = routing_weights(router(x))
        loss = -(y * predicted.clamp(min=1e-8).log()).sum(-1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    router.eval().requires_grad_(False)
    log.info("poly.router.done", questions=len(questions), final_loss=round(loss.item(), 4))
    return router
