"""The query API's routing step: fan a query out to the sites, merge their replies, blend the experts.

Each site answers with a :class:`~fedprag.shared.wire.RoutingReply` (opaque ids, scores, routing
vectors). The query API keeps the global top-k by score, blends their routings by
softmax(score / temperature) and keeps the top-m experts: one expert mixture per query, handed to
the query engine as :attr:`Routing.weights <fedprag.shared.methods.base.Routing>`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fedprag.client.routing_service import SiteRouter
from fedprag.shared.methods.base import Routing
from fedprag.shared.methods.poly.config import PolyConfig
from fedprag.shared.methods.poly.layers import combine
from fedprag.shared.wire import RoutingReply


def merge_replies(replies: Sequence[RoutingReply], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global top-``k`` over every site's reply to one query: scores ``[k]``, weights ``[k, G, K]``."""
    hits = sorted(((s, r.routing[o]) for r in replies for o, s in r.scores.items()), key=lambda h: -h[0])[:k]
    if not hits:
        raise ValueError("no site returned a passage for this query")
    return torch.tensor([s for s, _ in hits]), torch.from_numpy(np.stack([w for _, w in hits]))


class FanOut:
    """Routing for queries from a set of sites' routing services."""

    def __init__(self, routers: Sequence[SiteRouter], k: int, config: PolyConfig):
        self.routers, self.k, self.config = list(routers), k, config

    def routings(self, query_embeddings: np.ndarray) -> list[Routing]:
        """One blended expert mixture ``[G, K]`` per query, with the scores of the hits it blends."""
        per_site = [router.route(query_embeddings, self.k) for router in self.routers]
        out = []
        for q in range(len(query_embeddings)):
            scores, weights = merge_replies([site[q] for site in per_site], self.k)
            blended = combine(weights[None], scores[None], self.config.top_m, self.config.score_temperature)[0]
            out.append(Routing(scores=tuple(scores.tolist()), weights=blended))
        return out
