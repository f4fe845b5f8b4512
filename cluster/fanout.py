"""The query API's routing step: fan a query out to the sites and blend their mixtures into one.

Each site answers with a :class:`~fedprag.shared.wire.RoutingReply`: the scores of its top-k
passages (under ids fresh for the reply) and one expert mixture, their routing rows blended by
score. The query API keeps the global top-k scores across sites, weighs each site's mixture by the
softmax(score / temperature) mass of its passages among them, and keeps the top-m experts: one
mixture per query, handed to the query engine as :attr:`Routing.weights <fedprag.shared.methods.base.Routing>`.

A site's mixture blends all of its top-k passages, including any that miss the global top-k; what
that costs against blending the passages' own rows exactly (:meth:`FanOut.passage_row_routings`,
for evaluation only) is measured by ``fedprag demo``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fedprag.client.routing_service import SiteRouter
from fedprag.shared.methods.base import Routing
from fedprag.shared.methods.poly.config import PolyConfig
from fedprag.shared.methods.poly.layers import combine, keep_top_m
from fedprag.shared.wire import MIXTURE, RoutingReply


def blend_replies(replies: Sequence[RoutingReply], k: int, config: PolyConfig) -> Routing:
    """One query's routing from every site's reply: site mixtures weighted by their share of the
    softmax over the global top-``k`` scores, then the top-m experts."""
    hits = sorted(((s, site) for site, r in enumerate(replies) for s in r.scores.values()), key=lambda h: -h[0])[:k]
    if not hits:
        raise ValueError("no site returned a passage for this query")
    scores = torch.tensor([s for s, _ in hits])
    share = torch.softmax(scores / config.score_temperature, dim=0)
    per_site = torch.zeros(len(replies)).index_add_(0, torch.tensor([site for _, site in hits]), share)
    mixtures = torch.from_numpy(np.stack([r.mixture[MIXTURE] for r in replies]))
    mixed = (per_site[:, None, None] * mixtures).sum(0)
    return Routing(scores=tuple(scores.tolist()), weights=keep_top_m(mixed, config.top_m))


class FanOut:
    """Routing for queries from a set of sites' routing services."""

    def __init__(self, routers: Sequence[SiteRouter], k: int, config: PolyConfig):
        self.routers, self.k, self.config = list(routers), k, config

    def routings(self, query_embeddings: np.ndarray) -> list[Routing]:
        """One blended expert mixture ``[G, K]`` per query, from the sites' wire replies."""
        per_site = [router.route(query_embeddings, self.k, self.config.score_temperature) for router in self.routers]
        return [blend_replies([site[q] for site in per_site], self.k, self.config) for q in range(len(query_embeddings))]

    def passage_row_routings(self, query_embeddings: np.ndarray) -> list[Routing]:
        """Evaluation only: the exact blend of the global top-k passages' own routing rows, which
        no site sends (see :meth:`SiteRouter.passage_rows`); the reference blending is measured against."""
        per_site = [router.passage_rows(query_embeddings, self.k) for router in self.routers]
        out = []
        for q in range(len(query_embeddings)):
            hits = sorted((h for site in per_site for h in site[q]), key=lambda h: -h[0])[:self.k]
            if not hits:
                raise ValueError("no site returned a passage for this query")
            scores = torch.tensor([s for s, _ in hits])
            rows = torch.from_numpy(np.stack([w for _, w in hits]))
            weights = combine(rows[None], scores[None], self.config.top_m, self.config.score_temperature)[0]
            out.append(Routing(scores=tuple(scores.tolist()), weights=weights))
        return out
