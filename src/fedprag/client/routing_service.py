"""A site's routing service: answer a query with scores and an encoding of it, never text or a passage's row.

In Poly-PRAG mode (:class:`SiteRouter`) the encoding is one expert mixture; in distilled mode
(:class:`FactorRouter`) it is the LoRA the site's generator makes from its top-k passages for the
query, with ``site.factor_noise`` on it (none by default; see the class for what the factors
give away). What follows describes Poly-PRAG's; ids, noise on scores and the service itself are
the same in both. A failure while routing crosses as its exception's kind only.

The site embeds its encoded passages into its own faiss index (kept in its data directory),
searches it for each query embedding the query API sends, and replies with one
:class:`~fedprag.shared.wire.RoutingReply` per query: the scores of its best passages and one
expert mixture, their routing rows blended by score. A passage's own routing row never leaves, and
a pending passage (no routing row yet) is not searched.

The scores are keyed by ids fresh for every query: an HMAC-SHA256, under the site's secret key
(which never leaves the site), of a random per-query nonce and the passage id. The same passage
gets unrelated ids in two replies, so a caller can neither link replies by id nor test whether a
site holds a passage it can name. With ``site.reply_noise`` = σ > 0, Gaussian noise of scale σ
(seeded from the OS for every reply) is added to every score and mixture weight, the mixture
clipped at zero and renormalised: a caller who embeds a candidate text no longer reads back its
exact similarity, at the cost of noisier routing. Noise averages out over repeated queries; the
per-caller rate limit bounds how many a caller gets.

:func:`serve_routing` puts a :class:`SiteRouter` behind gRPC (``SiteRouting.Route`` in
``shared/proto/routing.proto``): TLS with a certificate from the federation's CA, a bearer token
per caller, a deadline on every call, bounds on ``k`` and the batch, and a per-caller rate limit
(a token bucket of ``site.rate_limit_burst`` queries, refilled at ``site.rate_limit_qps``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections.abc import Callable, Collection
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import torch

from fedprag.client.store import SiteStore
from fedprag.shared.io import atomic_write_text
from fedprag.shared.limits import RateLimiter
from fedprag.shared.log import get_logger
from fedprag.shared.methods.distilled.layers import protect
from fedprag.shared.methods.distilled.serializer import factor_arrays
from fedprag.shared.methods.distilled.trainer import DistilledEncoder
from fedprag.shared.methods.poly.layers import ExpertPool, RoutingTable, routing_weights
from fedprag.shared.proto import routing_pb2, routing_pb2_grpc
from fedprag.shared.retrieval.encoder import EMBEDDING_DIM, SentenceEncoder
from fedprag.shared.retrieval.index import PassageIndex
from fedprag.shared.wire import (
    EMBEDDINGS,
    MAX_MESSAGE_BYTES,
    MIXTURE,
    FactorReply,
    RoutingReply,
    RoutingRequest,
    WireError,
)

log = get_logger(__name__)

INDEX_FILE = "index.faiss"
INDEX_IDS = "index.ids"  # a digest of the indexed passage ids, in order
MAX_K = 64
MAX_DEADLINE = 300.0  # seconds
MAX_QUERIES = 256


class SiteIndex:
    """A site's faiss index over the passages it serves, kept in its data directory, and the fresh
    ids its replies give them; :class:`SiteRouter` and :class:`FactorRouter` answer with it."""

    def __init__(self, store: SiteStore, encoder: SentenceEncoder, passage_ids: list[str], version: int):
        self.store, self.encoder, self.version = store, encoder, version
        self.index = self._load_index(passage_ids)
        if self.index is None:
            self.index = self._embedded(passage_ids, 0)
            self._save_index(passage_ids)
        self._ids = [pid.encode() for pid in passage_ids]
        self._secret = store.secret()
        self._lock = threading.Lock()

    def _load_index(self, passage_ids: list[str]) -> PassageIndex | None:
        """The stored index, if it holds exactly these passages in this order."""
        path, ids_path = self.store.root / INDEX_FILE, self.store.root / INDEX_IDS
        if path.is_file() and ids_path.is_file() and ids_path.read_text() == _ids_digest(passage_ids):
            return PassageIndex.load(path)
        return None

    def _save_index(self, passage_ids: list[str]) -> None:
        with self.store.locked():  # opening the store elsewhere clears temp files, so write under its lock
            self.index.save(self.store.root / INDEX_FILE)
            atomic_write_text(self.store.root / INDEX_IDS, _ids_digest(passage_ids))

    def _embedded(self, passage_ids: list[str], first_row: int, index: PassageIndex | None = None) -> PassageIndex:
        texts = {p.passage_id: p.text for p in self.store.passages()}
        embeddings = self.encoder.embed([texts[pid] for pid in passage_ids]) if passage_ids else None
        if index is None:
            index = PassageIndex(EMBEDDING_DIM)
        if embeddings is not None:
            index.add(embeddings, list(range(first_row, first_row + len(passage_ids))))
        return index

    def __len__(self) -> int:
        return len(self._ids)

    def _add_ids(self, passage_ids: list[str]) -> None:
        """Index newly served passages (call under ``_lock``)."""
        self._embedded(passage_ids, len(self._ids), self.index)
        self._ids += [pid.encode() for pid in passage_ids]
        self._save_index([pid.decode() for pid in self._ids])

    def reply_id(self, nonce: bytes, row: int) -> str:
        """The id passage ``row`` goes by in one reply: ``x`` + 16 hex digits of HMAC(secret, nonce ‖ id)."""
        return "x" + hmac.new(self._secret, nonce + self._ids[row], hashlib.sha256).hexdigest()[:16]

    def _hits(self, query_embeddings: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query, the scores and rows of its top-``k`` served passages, best first."""
        with self._lock:
            scores, rows = self.index.search(query_embeddings, k)
        return [(score_row[id_row >= 0], id_row[id_row >= 0]) for score_row, id_row in zip(scores, rows)]


class SiteRouter(SiteIndex):
    """Serves Poly-PRAG routing for one site store's encoded passages against the released pool."""

    def __init__(self, store: SiteStore, encoder: SentenceEncoder, base_digest: str, pool: ExpertPool,
                 version: int = 0):
        table = store.encoded(pool, base_digest)
        super().__init__(store, encoder, table.passage_ids, version)
        self.weights = routing_weights(table.logits).numpy()

    def add(self, rows: RoutingTable) -> None:
        """Start serving newly encoded passages (their rows were just stored)."""
        with self._lock:
            self._add_ids(rows.passage_ids)
            self.weights = np.concatenate([self.weights, routing_weights(rows.logits).numpy()])

    def route(self, query_embeddings: np.ndarray, k: int, score_temperature: float,
              noise: float = 0.0) -> list[RoutingReply]:
        """Per query, one wire reply: the top-``k`` passages' scores under fresh ids, and their routing
        rows blended by softmax(score / ``score_temperature``) into one mixture (with ``noise``, both
        perturbed as the module docstring says)."""
        weights = self.weights
        replies = []
        for hit_scores, hit_rows in self._hits(query_embeddings, k):
            nonce = os.urandom(16)
            if len(hit_rows):
                blend = np.exp((hit_scores - hit_scores.max()) / score_temperature)
                mixture = (blend[:, None, None] * weights[hit_rows]).sum(0) / blend.sum()
            else:
                mixture = np.zeros(weights.shape[1:], dtype=np.float32)
            if noise > 0:
                hit_scores, mixture = _noised(hit_scores, mixture, noise)
            replies.append(RoutingReply(site=self.store.state.site_id, version=self.version,
                                        scores={self.reply_id(nonce, int(r)): float(s)
                                                for s, r in zip(hit_scores, hit_rows)},
                                        mixture={MIXTURE: mixture.astype(np.float32)}))
        return replies


class FactorRouter(SiteIndex):
    """Serves DistilledPRAG for one site store (distilled mode): every stored passage is searched,
    and each query's top-``k`` passages become one LoRA through the released generator, at the
    site. Only the factors, the scores and the passages' token counts leave. The factors go
    through :func:`~fedprag.shared.methods.distilled.layers.protect` with ``factor_noise``,
    keyed by the site's secret and the passages, so the same passages always get the same noise.
    With ``factor_noise`` 0, the default, they leave as generated, and an attacker holding the base
    model decodes 14–45% of their facts from them (benchmarks/results/distilled_leakage.md).

    The generator's base model must be the routing service's alone (the daemon loads a second
    copy, so a round's distillation never applies adapters to it), and ``model_lock`` serialises
    every use of it, also across the routers a release replaces.
    """

    def __init__(self, store: SiteStore, encoder: SentenceEncoder, generator: DistilledEncoder, version: int,
                 factor_noise: float = 0.0, model_lock: threading.Lock | None = None):
        passages = store.passages()
        super().__init__(store, encoder, [p.passage_id for p in passages], version)
        self.generator, self.factor_noise = generator, factor_noise
        self._texts = {p.passage_id.encode(): p.text for p in passages}
        self._tokens: dict[bytes, int] = {}  # passage id → token count, counted once, when first retrieved
        self._model_lock = model_lock or threading.Lock()

    def add(self, passage_ids: list[str]) -> None:
        """Start serving newly stored passages (the generator reads them at query time: no encoding)."""
        texts = {p.passage_id: p.text for p in self.store.passages()}
        with self._lock:
            self._texts.update((pid.encode(), texts[pid]) for pid in passage_ids)
            self._add_ids(passage_ids)

    def _token_count(self, passage: bytes) -> int:
        """How many tokens a passage has (as the prompt's mask tokens count them)."""
        if passage not in self._tokens:
            self._tokens[passage] = len(self.generator.ids(self._texts[passage]))
        return self._tokens[passage]

    def _readable(self, scores: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The hits the generator reads whole: best first, while their tokens (and a separator
        each) fit in ``max_doc_tokens``; the best one always (cut to the limit, as the generator
        cuts it). The others are left out of the reply: nothing was made from them."""
        limit, used, kept = self.generator.generator.config.max_doc_tokens, 0, 0
        for row in rows:
            used += self._token_count(self._ids[int(row)]) + (1 if kept else 0)
            if kept and used > limit:
                break
            kept += 1
        return scores[:kept], rows[:kept]

    def route(self, query_embeddings: np.ndarray, k: int, score_temperature: float,
              noise: float = 0.0) -> list[FactorReply]:
        """Per query, one wire reply: the scores of the top-``k`` passages the generator read
        (:meth:`_readable`) under fresh ids (with ``noise`` on them), their token counts, and the
        generator's LoRA factors for them (none for a query that found no passage)."""
        hits = [self._readable(scores, rows) for scores, rows in self._hits(query_embeddings, k)]
        found = [q for q, (_, rows) in enumerate(hits) if len(rows)]
        documents = {q: [self._texts[self._ids[int(r)]] for r in hits[q][1]] for q in found}
        keys = [self._secret + self.version.to_bytes(8, "little") +
                b"\0".join(self._ids[int(r)] for r in hits[q][1]) for q in found]
        factors: dict[int, dict[str, np.ndarray]] = {}
        if found:
            with self._model_lock, torch.no_grad():
                adapter = protect(self.generator.adapters([documents[q] for q in found]), self.factor_noise, keys)
            factors = {q: factor_arrays(adapter, row) for row, q in enumerate(found)}
        replies = []
        for q, (hit_scores, hit_rows) in enumerate(hits):
            nonce = os.urandom(16)
            ids = [self.reply_id(nonce, int(r)) for r in hit_rows]
            if noise > 0:
                hit_scores = hit_scores + np.random.default_rng(int.from_bytes(os.urandom(16), "little")).normal(
                    0.0, noise, hit_scores.shape)
            limit = self.generator.generator.config.max_doc_tokens
            lengths = [float(min(self._token_count(self._ids[int(r)]), limit)) for r in hit_rows]
            replies.append(FactorReply(site=self.store.state.site_id, version=self.version,
                                       scores=dict(zip(ids, map(float, hit_scores))), lengths=dict(zip(ids, lengths)),
                                       factors=factors.get(q, {})))
        return replies


def _noised(scores: np.ndarray, mixture: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Scores and mixture plus Gaussian noise of scale ``sigma`` from an OS-seeded generator; the
    mixture is clipped at zero and each group's row renormalised (uniform where nothing is left)."""
    rng = np.random.default_rng(int.from_bytes(os.urandom(16), "little"))
    scores = scores + rng.normal(0.0, sigma, scores.shape)
    mixture = np.clip(mixture + rng.normal(0.0, sigma, mixture.shape), 0.0, None)
    totals = mixture.sum(-1, keepdims=True)
    mixture = np.where(totals > 0, mixture / np.where(totals > 0, totals, 1.0), 1.0 / mixture.shape[-1])
    return scores, mixture


def _ids_digest(passage_ids: list[str]) -> str:
    return hashlib.sha256("\n".join(passage_ids).encode()).hexdigest()


@dataclass
class RoutingCounters:
    """What the routing service has done since the daemon started (for ``fedprag client status``)."""

    queries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, queries: int) -> None:
        """Add served queries (the service's worker threads call this concurrently)."""
        with self._lock:
            self.queries += queries


@dataclass(frozen=True)
class RoutingLimits:
    """What one caller may ask, and how much noise every reply carries."""

    queries_per_second: float = 500.0
    burst: int = 2000
    reply_noise: float = 0.0


def _bearer(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata():
        if key == "authorization" and value.startswith("Bearer "):
            return value[len("Bearer "):]
    return ""


class RoutingServicer(routing_pb2_grpc.SiteRoutingServicer):
    """``SiteRouting.Route``: authenticate, check the deadline and the request, route, reply."""

    def __init__(self, router: Callable[[], SiteIndex | None], tokens: Collection[str], counters: RoutingCounters,
                 limits: RoutingLimits = RoutingLimits()):
        self.router, self.counters, self.limits = router, counters, limits
        self._tokens = [t.encode() for t in tokens]
        self._rate = RateLimiter(limits.queries_per_second, limits.burst)

    def _refuse(self, context: grpc.ServicerContext, code: grpc.StatusCode, reason: str) -> None:
        log.warning("routing.refused", code=code.name, reason=reason, peer=context.peer())
        context.abort(code, reason)

    def Route(self, request: routing_pb2.WireRecord, context: grpc.ServicerContext) -> routing_pb2.RouteReplies:
        token = _bearer(context).encode()
        if not any(hmac.compare_digest(token, known) for known in self._tokens):
            self._refuse(context, grpc.StatusCode.UNAUTHENTICATED, "a valid bearer token is required")
        remaining = context.time_remaining()  # gRPC reports "no deadline" as ~2^63 s
        if remaining is None or remaining > MAX_DEADLINE:
            self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT,
                         f"every call needs a deadline of at most {MAX_DEADLINE:.0f} s")
        try:
            routing = RoutingRequest.from_proto(request)
        except WireError as exc:
            self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        embeddings = routing.queries.get(EMBEDDINGS)
        if embeddings is None or embeddings.ndim != 2 or not 0 < len(embeddings) <= MAX_QUERIES:
            self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT,
                         f"queries.{EMBEDDINGS} must be [Q, D] with 1 ≤ Q ≤ {MAX_QUERIES}")
        if not self._rate.allow(token, len(embeddings)):
            self._refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"rate limit: {self.limits.queries_per_second:g} queries per second per caller")
        if not 1 <= routing.k <= MAX_K or routing.score_temperature <= 0:
            self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT,
                         f"k must be in 1..{MAX_K} and score_temperature positive")
        router = self.router()
        if router is None or not len(router):
            self._refuse(context, grpc.StatusCode.UNAVAILABLE, "this site has no encoded passages yet")
        if embeddings.shape[1] != router.index.index.d:
            self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT,
                         f"query embeddings have {embeddings.shape[1]} dimensions, the site's index {router.index.index.d}")
        try:
            replies = router.route(embeddings, routing.k, routing.score_temperature, self.limits.reply_noise)
        except Exception as exc:  # noqa: BLE001 - the kind only crosses: an exception's text could quote a passage
            log.error("routing.failed", kind=type(exc).__name__)
            context.abort(grpc.StatusCode.INTERNAL, type(exc).__name__)
        self.counters.count(len(replies))
        return routing_pb2.RouteReplies(replies=[r.to_proto() for r in replies])


@dataclass(frozen=True)
class ServerTls:
    """The routing endpoint's certificate and key (signed by the federation's CA)."""

    cert: Path
    key: Path


def serve_routing(router: Callable[[], SiteIndex | None], address: str, tls: ServerTls, tokens: Collection[str],
                  counters: RoutingCounters, limits: RoutingLimits = RoutingLimits(),
                  workers: int = 4) -> tuple[grpc.Server, int]:
    """Start the routing service on ``address`` (``host:port``; port 0 picks one); returns it and its port."""
    if not tokens:
        raise ValueError("site.tokens_file: the routing service needs at least one caller token")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=[
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES), ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)])
    routing_pb2_grpc.add_SiteRoutingServicer_to_server(RoutingServicer(router, tokens, counters, limits), server)
    credentials = grpc.ssl_server_credentials([(tls.key.read_bytes(), tls.cert.read_bytes())])
    port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"site.routing_address: cannot listen on {address}")
    server.start()
    return server, port
