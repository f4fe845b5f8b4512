"""A site's routing service: answer a query with scores and one expert mixture, never text or a passage's row.

The site embeds its passages once into its own faiss index (kept in its data directory), searches
it for each query embedding the query API sends, and replies with one
:class:`~fedprag.shared.wire.RoutingReply` per query: the scores of its best passages and one
expert mixture, their routing rows blended by score. A passage's own routing row never leaves.
The scores are keyed by ids fresh for every query: an HMAC-SHA256, under the site's secret key
(which never leaves the site), of a random per-query nonce and the passage id. The same passage
gets unrelated ids in two replies, so a caller can neither link replies by id nor test whether a
site holds a passage it can name.
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
from fedprag.shared.wire import MIXTURE, RoutingReply

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

    def _hits(self, query_embeddings: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query, the scores and rows of the site's top-``k`` passages."""
        scores, rows = self.index.search(query_embeddings, k)
        return [(score_row[id_row >= 0], id_row[id_row >= 0]) for score_row, id_row in zip(scores, rows)]

    def route(self, query_embeddings: np.ndarray, k: int, score_temperature: float) -> list[RoutingReply]:
        """Per query, one wire reply: the top-``k`` passages' scores under fresh ids, and their routing
        rows blended by softmax(score / ``score_temperature``) into one mixture."""
        replies = []
        for scores, rows in self._hits(query_embeddings, k):
            nonce = os.urandom(16)
            blend = np.exp((scores - scores.max()) / score_temperature)
            mixture = (blend[:, None, None] * self.weights[rows]).sum(0) / blend.sum()
            replies.append(RoutingReply(site=self.store.state.site_id, pool_version=self.store.state.pool_version,
                                        scores={self.reply_id(nonce, int(r)): float(s) for s, r in zip(scores, rows)},
                                        mixture={MIXTURE: mixture.astype(np.float32)}))
        return replies

    def passage_rows(self, query_embeddings: np.ndarray, k: int) -> list[list[tuple[float, np.ndarray]]]:
        """Evaluation only, in one process: per query, each top-``k`` passage's score and own
        routing row, the inputs an exact global blend would need. No routing service sends these:
        a row with the pool is that passage's encoding (it measures what blending at the site costs)."""
        return [[(float(s), self.weights[int(r)]) for s, r in zip(scores, rows)]
                for scores, rows in self._hits(query_embeddings, k)]
