"""The query API's routing step: fan a query out to the sites and blend their mixtures into one.

Each site daemon answers over gRPC (:class:`RemoteSite`) with one
:class:`~fedprag.shared.wire.RoutingReply` per query: the scores of its top-k passages (under ids
fresh for the reply) and one expert mixture, their routing rows blended by score. The query API
keeps the global top-k scores across sites, weighs each site's mixture by the softmax(score /
temperature) mass of its passages among them, and keeps the top-m experts: one mixture per query,
handed to the query engine as :attr:`Routing.weights <fedprag.shared.methods.base.Routing>`.

Every site is asked at once, with a deadline. A site that is down, late or refuses is skipped;
:class:`FanOutTrace` names it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import grpc
import numpy as np
import torch

from fedprag.shared.log import get_logger
from fedprag.shared.methods.base import Routing
from fedprag.shared.methods.poly.config import PolyConfig
from fedprag.shared.methods.poly.layers import keep_top_m
from fedprag.shared.proto import routing_pb2_grpc
from fedprag.shared.wire import EMBEDDINGS, MIXTURE, RoutingReply, RoutingRequest, WireError

log = get_logger(__name__)


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


class SiteUnavailable(RuntimeError):
    """A site did not answer in time, refused the call, or sent a reply the wire schema refuses."""


class RoutingSite(Protocol):
    """Anything that answers routing requests for one site (a :class:`RemoteSite`, or in a unit test a fake)."""

    name: str

    def route(self, query_embeddings: np.ndarray, k: int, score_temperature: float) -> list[RoutingReply]: ...


class RemoteSite:
    """A site daemon's routing service over gRPC: TLS against the federation's CA, a bearer token,
    and ``deadline`` seconds per call."""

    def __init__(self, name: str, address: str, ca_cert: str | Path, token: str, deadline: float = 5.0):
        self.name, self.address, self.deadline = name, address, deadline
        self._metadata = (("authorization", f"Bearer {token}"),)
        credentials = grpc.ssl_channel_credentials(root_certificates=Path(ca_cert).read_bytes())
        self._channel = grpc.secure_channel(address, credentials, options=[
            ("grpc.max_receive_message_length", 8 * 1024 * 1024)])
        self._stub = routing_pb2_grpc.SiteRoutingStub(self._channel)

    def route(self, query_embeddings: np.ndarray, k: int, score_temperature: float) -> list[RoutingReply]:
        request = RoutingRequest(k=k, score_temperature=score_temperature,
                                 queries={EMBEDDINGS: np.asarray(query_embeddings, dtype=np.float32)})
        try:
            reply = self._stub.Route(request.to_proto(), timeout=self.deadline, metadata=self._metadata)
            replies = [RoutingReply.from_proto(r) for r in reply.replies]
        except grpc.RpcError as exc:
            raise SiteUnavailable(f"{exc.code().name}: {exc.details()}") from None
        except WireError as exc:
            raise SiteUnavailable(f"malformed reply: {exc}") from None
        if len(replies) != len(query_embeddings):
            raise SiteUnavailable(f"{len(replies)} replies for {len(query_embeddings)} queries")
        if any(MIXTURE not in r.mixture or r.mixture[MIXTURE].ndim != 2 for r in replies):
            raise SiteUnavailable(f"a reply without a [G, K] '{MIXTURE}'")
        return replies

    def close(self) -> None:
        self._channel.close()


@dataclass
class FanOutTrace:
    """One fan-out: which sites answered, which did not and why, the pool version routed with, and how long it took."""

    asked: list[str] = field(default_factory=list)
    answered: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    pool_version: int = 0
    seconds: float = 0.0


class FanOut:
    """Routing for queries from a set of sites' routing services, asked in parallel.

    Sites route with the pool the coordinator last released to them. While a new release reaches
    them one by one, replies come from two versions; the fan-out blends only the newest version's
    replies (never one older than ``min_version``, or another than a pinned ``version``) and names
    the other sites in the trace, so a query is never answered with a mixture of two pools.
    """

    def __init__(self, sites: Sequence[RoutingSite], k: int, config: PolyConfig):
        self.sites, self.k, self.config = list(sites), k, config
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(self.sites)), thread_name_prefix="fanout")
        self.last_trace = FanOutTrace()

    def close(self) -> None:
        """Shut the worker threads down and close every site's channel."""
        self._pool.shutdown()
        for site in self.sites:
            if isinstance(site, RemoteSite):
                site.close()

    def routings(self, query_embeddings: np.ndarray) -> list[Routing]:
        """One blended expert mixture ``[G, K]`` per query, from the replies of the sites that answered."""
        routings, self.last_trace = self.route(query_embeddings)
        return routings

    def route(self, query_embeddings: np.ndarray, k: int | None = None, version: int | None = None,
              min_version: int = 0) -> tuple[list[Routing], FanOutTrace]:
        """Ask every site at once; each query's blended mixture and the trace. Raises
        :class:`SiteUnavailable` when no site answers with a usable pool version."""
        k = k or self.k
        started = time.perf_counter()
        trace = FanOutTrace(asked=[site.name for site in self.sites])
        calls = [self._pool.submit(site.route, query_embeddings, k, self.config.score_temperature)
                 for site in self.sites]
        answers: dict[str, list[RoutingReply]] = {}
        for site, call in zip(self.sites, calls):
            try:
                answers[site.name] = call.result()
            except SiteUnavailable as exc:
                trace.failed[site.name] = str(exc)[:200]
        wanted = version if version is not None else max((r[0].pool_version for r in answers.values()), default=0)
        for name, replies in list(answers.items()):
            if replies[0].pool_version != wanted or wanted < min_version:
                trace.failed[name] = f"routes with pool version {replies[0].pool_version}, not {wanted}"
                del answers[name]
        shapes = {r[0].mixture[MIXTURE].shape for r in answers.values()}
        if len(shapes) > 1:  # one pool version, two shapes: a site misconfigured; keep the commonest
            common = max(shapes, key=lambda s: sum(r[0].mixture[MIXTURE].shape == s for r in answers.values()))
            for name, replies in list(answers.items()):
                if replies[0].mixture[MIXTURE].shape != common:
                    trace.failed[name] = f"mixtures of shape {list(replies[0].mixture[MIXTURE].shape)}, not {list(common)}"
                    del answers[name]
        for name, reason in trace.failed.items():
            log.warning("fanout.site.failed", site=name, reason=reason)
        if not answers:
            raise SiteUnavailable(f"no site answered with a usable pool: {trace.failed}")
        trace.answered, trace.pool_version = list(answers), wanted
        trace.seconds = time.perf_counter() - started
        replies = list(answers.values())
        return [blend_replies([site[q] for site in replies], k, self.config) for q in range(len(query_embeddings))], trace
