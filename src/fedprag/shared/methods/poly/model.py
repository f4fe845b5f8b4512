"""Poly-PRAG at query time: one mixture of the shared experts per request, all in one forward.

A request's expert weights ``[G, K]`` come from one of three places, in this order:

* ``Routing.weights``: already blended by the sites' routing replies (federated serving);
* the learned query router, from the query's embedding (no site needs to answer);
* the retrieved passages' own routing rows, blended by retrieval score.

The pool turns the batch's weights into one adapter: the experts' factors shared by the batch and
a per-request gate (:meth:`~fedprag.shared.methods.poly.layers.ExpertPool.adapter`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from fedprag.shared.data.benchmark import synthetic_population
from fedprag.shared.lora.layers import Adapter
from fedprag.shared.methods.base import Corpus, EncodingCost, MethodModel, Routing
from fedprag.shared.methods.poly import serializer, trainer
from fedprag.shared.methods.poly.config import PolyConfig
from fedprag.shared.methods.poly.layers import (
    ExpertPool,
    QueryRouter,
    RoutingTable,
    combine,
    keep_top_m,
    routing_weights,
)

CONFIG = PolyConfig
VARIANTS = ("poly", "poly_uniform", "poly_incremental", "poly_router")


class PolyModel(MethodModel):
    """The expert pool, with the passages' routing table or a query router where this side has one."""

    def __init__(self, pool: ExpertPool, config: PolyConfig, routing: RoutingTable | None = None,
                 router: QueryRouter | None = None, name: str = "poly"):
        self.pool, self.config, self.routing, self.router, self.name = pool, config, routing, router, name

    def expert_weights(self, routings: Sequence[Routing]) -> Tensor:
        """Per-request expert weights ``[b, G, K]`` (see the module docstring for their source)."""
        pool, config = self.pool, self.config
        if config.uniform:
            return torch.full((len(routings), pool.n_groups, pool.n_experts), 1.0 / pool.n_experts)
        blended = sum(r.weights is not None for r in routings)
        if blended and blended < len(routings):
            raise ValueError(f"{self.name}: {blended} of {len(routings)} requests carry blended expert weights; "
                             "a batch is routed one way")
        if blended:
            return torch.stack([r.weights for r in routings])
        if self.router is not None:
            embeddings = torch.from_numpy(np.stack([r.embedding for r in routings])).float()
            return keep_top_m(routing_weights(self.router(embeddings)), config.top_m)
        if self.routing is None:
            raise ValueError(f"{self.name}: a request carries neither expert weights nor passages with routing rows here")
        weights = torch.stack([self.routing.weights(list(r.passage_ids)) for r in routings])
        scores = torch.tensor([list(r.scores) for r in routings])
        return combine(weights, scores, config.top_m, config.score_temperature)

    def adapter(self, routings: Sequence[Routing]) -> Adapter | None:
        return self.pool.adapter(self.expert_weights(routings))


def _stored(corpus: Corpus, key: str, pool: ExpertPool, routing: RoutingTable,
            config: PolyConfig) -> tuple[ExpertPool, RoutingTable, int]:
    """Round-trip an encoding through disk, as a deployment would; returns it and its bytes."""
    root = corpus.work_dir / key
    stored = serializer.save_pool(root / "pool", pool, config, corpus.base.digest)
    stored += serializer.save_routing(root / "routing", routing, pool, corpus.base.digest)
    loaded, _ = serializer.load_pool(root / "pool", corpus.base.digest)
    return loaded, serializer.load_routing(root / "routing", loaded, corpus.base.digest), stored


def _full(corpus: Corpus, config: PolyConfig, key: str) -> tuple[ExpertPool, RoutingTable, EncodingCost]:
    """Pool and routing trained jointly on every passage."""
    started = time.perf_counter()
    pool, routing, *_ = trainer.train_pool(corpus.base, corpus.layers, corpus.passages, corpus.augmentations, config,
                                           corpus.show_progress)
    seconds = (time.perf_counter() - started) / len(corpus.passages)
    pool, routing, stored = _stored(corpus, key, pool, routing, config)
    return pool, routing, EncodingCost(seconds, stored)


def _incremental(corpus: Corpus, config: PolyConfig) -> tuple[ExpertPool, RoutingTable, EncodingCost]:
    """Pool trained on half the passages (plus ``poly.incremental_population`` synthetic people, a
    stand-in for a site's existing corpus); the other half encoded routing-only against it, frozen.
    The cost is that of the routing-only half."""
    initial, added = corpus.passages[0::2], corpus.passages[1::2]
    fitted, augmentations = initial, corpus.augmentations
    if config.incremental_population:
        others, other_augmentations = synthetic_population(config.incremental_population)
        fitted, augmentations = initial + others, {**augmentations, **other_augmentations}
    pool, routing, *_ = trainer.train_pool(corpus.base, corpus.layers, fitted, augmentations, config,
                                           corpus.show_progress)
    routing = RoutingTable(routing.passage_ids[:len(initial)], routing.logits[:len(initial)])  # the corpus's rows
    started = time.perf_counter()
    new_rows = trainer.encode_incremental(corpus.base, corpus.layers, pool, added, augmentations, config,
                                          corpus.show_progress)
    seconds = (time.perf_counter() - started) / len(added)
    pool, routing, stored = _stored(corpus, "poly_incremental", pool, routing.extended(new_rows), config)
    return pool, routing, EncodingCost(seconds, stored)


def encode_corpus(corpus: Corpus, config: PolyConfig, variant: str = "poly") -> tuple[PolyModel, EncodingCost]:
    """Encode the corpus for one variant: ``poly`` (learned routing), ``poly_uniform`` (the ablation:
    equal weights on every expert, in training and answering), ``poly_incremental`` (half the
    passages routing-only) or ``poly_router`` (``poly``'s encoding, routed by the learned query
    router instead of the passages' rows). Variants that share an encoding encode it once."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown Poly-PRAG variant '{variant}' (known: {', '.join(VARIANTS)})")
    if variant == "poly_uniform":
        config = dataclasses.replace(config, uniform=True)
    key = "poly" if variant == "poly_router" else variant
    if key not in corpus.encodings:
        corpus.encodings[key] = _incremental(corpus, config) if key == "poly_incremental" else _full(corpus, config, key)
    pool, routing, cost = corpus.encodings[key]
    router = None
    if variant == "poly_router":
        if "poly_router" not in corpus.encodings:
            corpus.encodings["poly_router"] = trainer.train_query_router(corpus.embed, routing, corpus.augmentations,
                                                                         seed=config.seed)
        router = corpus.encodings["poly_router"]
    return PolyModel(pool, config, routing, router, name=variant), cost
