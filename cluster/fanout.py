"""The query API's routing step: fan a query out to the sites, merge their replies, mix the experts.

Each site answers with a :class:`~shared.wire.RoutingReply` (opaque ids, scores, routing
vectors). The query API keeps the global top-k by score, blends their routings by
softmax(score / temperature), keeps the top-m experts, and answers closed-book under that
mixture of the current pool, batching requests with different mixtures in one forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from client.routing_service import SiteRouter
from shared import prompts
from shared.eval.methods import EncodingCost, EvalContext, Hits
from shared.lora.layers import Adapter
from shared.methods.poly.config import PolyConfig
from shared.methods.poly.layers import ExpertPool, combine
from shared.wire import RoutingReply


def merge_replies(replies: Sequence[RoutingReply], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global top-``k`` over every site's reply to one query: scores ``[k]``, weights ``[k, G, K]``."""
    hits = sorted(((s, r.routing[o]) for r in replies for o, s in r.scores.items()), key=lambda h: -h[0])[:k]
    if not hits:
        raise ValueError("no site returned a passage for this query")
    return torch.tensor([s for s, _ in hits]), torch.from_numpy(np.stack([w for _, w in hits]))


def fan_out_weights(routers: Sequence[SiteRouter], query_embeddings: np.ndarray, k: int,
                    config: PolyConfig) -> torch.Tensor:
    """Per-request expert weights ``[b, G, K]`` from every site's routing replies."""
    per_site = [router.route(query_embeddings, k) for router in routers]
    merged = [merge_replies([site[q] for site in per_site], k) for q in range(len(query_embeddings))]
    width = min(len(s) for s, _ in merged)
    scores = torch.stack([s[:width] for s, _ in merged])
    weights = torch.stack([w[:width] for _, w in merged])
    return combine(weights, scores, config.top_m, config.score_temperature)


class FederatedPoly:
    """The federated pool, routed by fan-out to the sites, as a method of the evaluation harness."""

    def __init__(self, pool: ExpertPool, routers: Sequence[SiteRouter], config: PolyConfig, stored_bytes: int,
                 top_k: int, name: str = "poly_federated"):
        self.pool, self.routers, self.config = pool, list(routers), config
        self.stored_bytes, self.top_k, self.name = stored_bytes, top_k, name

    def encode(self, ctx: EvalContext) -> EncodingCost:
        return EncodingCost(0.0, self.stored_bytes)

    def inputs(self, ctx: EvalContext, question_rows: list[int], hits: Hits) -> tuple[list[str], Adapter | None]:
        questions = ctx.question_texts(question_rows)
        weights = fan_out_weights(self.routers, ctx.embed(questions), self.top_k, self.config)
        return [prompts.closed_book(q) for q in questions], self.pool.adapter(weights)
