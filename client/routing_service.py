"""A site's routing service: answer a query with opaque passage ids, scores and routing, never text.

The site embeds its passages once into its own faiss index (kept in its data directory), searches
it for each query embedding the query API sends, and replies with a :class:`~fedprag.shared.wire.RoutingReply`
per query. Passage ids are replaced by ids fresh for every query: an HMAC-SHA256, under the
site's secret key (which never leaves the site), of a random per-query nonce and the passage id.
The same passage gets unrelated ids in two replies, so a caller can neither link replies by id nor
test whether a site holds a passage it can name.
"""

from __future__ import annotations

import hashlib
import hmac
import os

import numpy as np

from fedprag.client.store import SiteStore
from fedprag.shared.methods.poly.layers import ExpertPool, routing_weights
from fedprag.shared.retrieval.encoder import SentenceEncoder
from fedprag.shared.retrieval.index import PassageIndex
from fedprag.shared.wire import RoutingReply

INDEX_FILE = "index.faiss"


class SiteRouter:
    """Serves routing for one site store against the federation's current pool."""

    def __init__(self, store: SiteStore, encoder: SentenceEncoder, base_digest: str, pool: ExpertPool):
        self.store = store
        passages = store.passages()
        path = store.root / INDEX_FILE
        index = PassageIndex.load(path) if path.is_file() else None
        if index is None or len(index) != len(passages):
            index = PassageIndex.build(encoder.embed([p.text for p in passages]), list(range(len(passages))))
            index.save(path)
        self.index = index
        self.weights = routing_weights(store.routing(pool, base_digest)).numpy()
        self._secret = store.secret()
        self._ids = [p.passage_id.encode() for p in passages]

    def reply_id(self, nonce: bytes, row: int) -> str:
        """The id passage ``row`` goes by in one reply: ``x`` + 16 hex digits of HMAC(secret, nonce ‖ id)."""
        return "x" + hmac.new(self._secret, nonce + self._ids[row], hashlib.sha256).hexdigest()[:16]

    def route(self, query_embeddings: np.ndarray, k: int) -> list[RoutingReply]:
        """The site's top-``k`` passages per query, as wire messages."""
        scores, rows = self.index.search(query_embeddings, k)
        replies = []
        for score_row, id_row in zip(scores, rows):
            nonce = os.urandom(16)
            hits = [(self.reply_id(nonce, int(r)), float(s), self.weights[int(r)])
                    for s, r in zip(score_row, id_row) if r >= 0]
            replies.append(RoutingReply(site=self.store.state.site_id, pool_version=self.store.state.pool_version,
                                        scores={o: s for o, s, _ in hits}, routing={o: w for o, _, w in hits}))
        return replies

