"""The serving actor group: replicas that route many questions and answer them in one forward pass.

Each replica holds the base model with LoRA layers attached, its routing stage
(:class:`~fedprag.cluster.serving.router.RoutingStage`: the retrieval encoder, the gRPC channels to
the site daemons, the learned routers) and the pool versions it has been asked for (the newest
three, loaded from the coordinator's registry on first use). Concurrent requests are collected by
``@serve.batch``. A batch is routed at once (one embedding pass, one gRPC call per site), then
split only by method, pool version and answer length, and each part is one
:meth:`QueryEngine.answer <fedprag.shared.query.QueryEngine.answer>`: one forward per token, every
request under its own expert mixture (in distilled mode, its own combination of the sites'
generated LoRAs), nothing merged and nothing reloaded. A busy replica waits longer to fill a batch
(``serve.busy_batch_wait_ms``), since under load a batch costs little more than one request.
A request names its pool version, so one in flight finishes on the version it started with while
a newer one is loaded beside it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from ray import serve

from fedprag.cluster.serving.batching import by_group
from fedprag.cluster.serving.messages import Generated, GenerateItem, RouteResult
from fedprag.cluster.serving.modes import serving_mode
from fedprag.cluster.serving.router import RoutingSettings, RoutingStage
from fedprag.coordinator.registry import PoolRegistry
from fedprag.shared.config import ServeSection
from fedprag.shared.log import get_logger
from fedprag.shared.methods.base import MethodModel, Routing
from fedprag.shared.methods.baselines import ClosedBookModel
from fedprag.shared.methods.poly.config import PolyConfig
from fedprag.shared.methods.poly.model import PolyModel
from fedprag.shared.methods.poly.serializer import load_pool
from fedprag.shared.models.loading import load_causal_lm
from fedprag.shared.query import PerRequestMerge, QueryEngine

log = get_logger(__name__)

POOLS_KEPT = 3
"""Pool versions a replica keeps loaded: the three newest (requests in flight keep theirs alive)."""


@dataclass(frozen=True)
class Batching:
    """How a replica gathers requests into batches (``serve.max_batch_size`` and the two waits)."""

    max_size: int = 32
    idle_wait_s: float = 0.002
    busy_wait_s: float = 0.02

    @classmethod
    def of(cls, settings: ServeSection) -> Batching:
        return cls(settings.max_batch_size, settings.batch_wait_ms / 1e3, settings.busy_batch_wait_ms / 1e3)


def heaviest_experts(weights: torch.Tensor | None, count: int = 16) -> tuple[tuple[int, int, float], ...]:
    """The ``count`` heaviest experts of a ``[G, K]`` mixture (none without one)."""
    if weights is None:
        return ()
    flat = weights.flatten()
    top = flat.topk(min(count, flat.numel()))
    experts = weights.shape[-1]
    return tuple((int(i) // experts, int(i) % experts, round(float(w), 6))
                 for w, i in zip(top.values, top.indices) if w > 0)


def _routed(generated: Generated, result: RouteResult) -> Generated:
    """``generated`` with what its routing says about it (the mixture itself stays in the replica)."""
    return dataclasses.replace(generated, version=result.version, sites=result.trace,
                               experts=heaviest_experts(result.weights))


class Replica:
    """A serving replica (a Ray Serve deployment; see :func:`replica_deployment`)."""

    def __init__(self, model_spec: str, registry: str, poly: PolyConfig, threads: int = 1,
                 batching: Batching = Batching(), extra: Mapping[str, MethodModel] | None = None,
                 mode: str = "poly", routing: RoutingSettings | None = None):
        torch.set_num_threads(threads)
        self.base = load_causal_lm(model_spec, show_progress=False)
        self.engine = QueryEngine(self.base)
        self.registry = PoolRegistry(registry, self.base.digest)
        self.mode = serving_mode(mode)
        self.router = RoutingStage(self.registry, poly, routing, self.mode) if routing is not None else None
        self.poly = poly
        self.pools: dict[int, PolyModel] = {}
        self.models: dict[str, MethodModel] = {"closed_book": ClosedBookModel(), **(extra or {})}
        self.context = self.base.model.config.max_position_embeddings
        self._loading = threading.Lock()
        self.batching = batching
        self.generate.set_max_batch_size(batching.max_size)
        self.generate.set_batch_wait_timeout_s(batching.idle_wait_s)
        log.info("serve.replica.ready", model=self.base.path.name, threads=threads, mode=mode,
                 sites=len(routing.sites) if routing else 0)

    def _pool(self, version: int) -> PolyModel:
        """Pool ``version`` as a model, loaded once from the registry."""
        with self._loading:
            if version not in self.pools:
                pool, _ = load_pool(self.registry.path(version), self.base.digest)
                self.pools[version] = PolyModel(pool, self.poly, name=f"poly@{version}")
                while len(self.pools) > POOLS_KEPT:
                    del self.pools[min(self.pools)]
                log.info("serve.replica.pool_loaded", version=version)
            return self.pools[version]

    def _model(self, item: GenerateItem) -> MethodModel:
        if item.method == "poly":
            return self._pool(item.version)
        if item.method == self.mode.name:
            with self._loading:  # the federation's own model (distilled: the generator's mask token), once
                if item.method not in self.models:
                    self.models[item.method], _ = self.mode.federated_model(self.registry.root, self.base, self.poly,
                                                                           item.method)
        if item.method not in self.models:
            raise ValueError(f"method '{item.method}' is not served here (served: poly, {', '.join(self.models)})")
        return self.models[item.method]

    @staticmethod
    def _routing(item: GenerateItem) -> Routing:
        return Routing(weights=item.weights) if item.method == "poly" else item.routing or Routing()

    # -- routing ---------------------------------------------------------------------------------

    def _route_batch(self, items: list[GenerateItem]) -> list[RouteResult | None]:
        """Each item's routing (``None`` for an item that brings its own), the batch routed at once."""
        asked = [i for i, item in enumerate(items) if item.route is not None]
        out: list[RouteResult | None] = [None] * len(items)
        if not asked:
            return out
        if self.router is None:
            results = [RouteResult(error="unavailable", reason="this replica was built without routing")] * len(asked)
        else:
            results = self.router.route([items[i].route for i in asked])  # type: ignore[misc]
        for i, result in zip(asked, results):
            out[i] = result
        return out

    # -- generating ------------------------------------------------------------------------------

    def _answer_group(self, items: list[GenerateItem]) -> list[Generated]:
        """One batched generate for items of one method, pool version and answer length. Each prompt
        is built and counted once; one over the model's context is refused, naming the question."""
        model, limit = self._model(items[0]), items[0].max_new_tokens
        routings = [self._routing(item) for item in items]
        lengths = [len(ids) for ids in self.base.tokenizer(model.prompts([i.question for i in items], routings)).input_ids]
        out = [Generated(error=f"question: {n} prompt tokens plus {limit} to generate is over this model's context "
                               f"of {self.context}", kind="question") if n + limit > self.context else None
               for n in lengths]
        runnable = [i for i, done in enumerate(out) if done is None]
        if runnable:
            answers = self.engine.answer(model, [items[i].question for i in runnable], [routings[i] for i in runnable],
                                         limit)
            answer_lengths = [len(ids) for ids in self.base.tokenizer(answers).input_ids]
            shared = 1 if isinstance(model, PerRequestMerge) else len(runnable)  # requests in one forward pass
            for i, answer, n in zip(runnable, answers, answer_lengths):
                out[i] = Generated(answer, lengths[i], n, shared)
        return out  # type: ignore[return-value]

    def _answer_batch(self, items: list[GenerateItem], routed: list[RouteResult | None]) -> list[Generated]:
        """Every item's answer, in order: a routed item takes its mixture and version from its routing
        (one that could not be routed is answered with why); then one generate per group."""
        out: list[Generated | None] = [None] * len(items)
        ready: list[tuple[int, GenerateItem]] = []
        for i, (item, result) in enumerate(zip(items, routed)):
            if result is not None and result.error:
                out[i] = _routed(Generated(error=result.reason, kind=result.error), result)
            elif result is not None:
                ready.append((i, dataclasses.replace(item, weights=result.weights, version=result.version,
                                                     routing=result.routing)))
            else:
                ready.append((i, item))
        answered = by_group([item for _, item in ready],
                            lambda item: (item.method, -1 if item.version is None else item.version,
                                          item.max_new_tokens),
                            self._answer_group,
                            lambda exc: Generated(error=f"generation failed: {type(exc).__name__}", kind="failed"),
                            "serve.replica.failed")
        for (i, _), generated in zip(ready, answered):
            result = routed[i]
            out[i] = generated if result is None else _routed(generated, result)
        return out  # type: ignore[return-value]

    def _answer(self, items: list[GenerateItem]) -> list[Generated]:
        started = time.perf_counter()
        routed = self._route_batch(items)
        routed_at = time.perf_counter()
        answers = self._answer_batch(items, routed)
        timings = (routed_at - started, time.perf_counter() - routed_at)
        return [dataclasses.replace(a, timings=timings) for a in answers]

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def generate(self, items: list[GenerateItem]) -> list[Generated]:
        """Route and answer every request collected in this batch: one embedding pass and one call per
        site for the batch, then one forward pass per method and pool version. A replica whose batch
        held more than one request is busy, and waits longer to fill the next."""
        busy = len(items) > 1
        self.generate.set_batch_wait_timeout_s(self.batching.busy_wait_s if busy else self.batching.idle_wait_s)
        return await asyncio.to_thread(self._answer, items)

    def __del__(self) -> None:
        if getattr(self, "router", None) is not None:
            self.router.close()


def replica_deployment(settings: ServeSection) -> serve.Deployment:
    """The generator as a Ray Serve deployment: ``serve.replicas`` of them, or autoscaled between
    ``serve.min_replicas`` and ``serve.max_replicas`` when the latter is set."""
    options: dict = {"ray_actor_options": {"num_cpus": settings.replica_cpus}, "max_ongoing_requests": 64,
                     "health_check_period_s": 2.0, "graceful_shutdown_timeout_s": 5.0}
    if settings.max_replicas:
        options["autoscaling_config"] = {"min_replicas": settings.min_replicas, "initial_replicas": settings.replicas,
                                         "max_replicas": settings.max_replicas,
                                         "target_ongoing_requests": settings.target_ongoing_requests,
                                         "upscale_delay_s": settings.upscale_delay_s,
                                         "look_back_period_s": settings.look_back_period_s}
    else:
        options["num_replicas"] = settings.replicas
    return serve.deployment(Replica, name="Replica").options(**options)
