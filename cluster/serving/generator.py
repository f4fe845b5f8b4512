"""The serving actor group: generator replicas that answer many routed questions in one forward pass.

Each replica holds the base model with LoRA layers attached and the pool versions it has been asked
for (the newest three, loaded from the coordinator's registry on first use). Concurrent requests
are collected by ``@serve.batch``; a batch is split only by method, pool version and answer length, and
each part is one :meth:`QueryEngine.answer <fedprag.shared.query.QueryEngine.answer>`: one forward
per token, every request under its own expert mixture (in distilled mode, its own sum of the
sites' generated LoRAs), nothing merged and nothing reloaded.
A request names its pool version, so one in flight finishes on the version it started with while
a newer one is loaded beside it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from ray import serve

from fedprag.cluster.serving.batching import by_group
from fedprag.coordinator.registry import GeneratorRegistry, PoolRegistry
from fedprag.shared.log import get_logger
from fedprag.shared.methods.base import MethodModel, Routing
from fedprag.shared.methods.baselines import ClosedBookModel
from fedprag.shared.methods.distilled.model import DistilledModel
from fedprag.shared.methods.poly.config import PolyConfig
from fedprag.shared.methods.poly.model import PolyModel
from fedprag.shared.methods.poly.serializer import load_pool
from fedprag.shared.models.loading import load_causal_lm
from fedprag.shared.query import QueryEngine

log = get_logger(__name__)

POOLS_KEPT = 3
"""Pool versions a replica keeps loaded: the three newest (requests in flight keep theirs alive)."""


@dataclass(frozen=True)
class GenerateItem:
    """One question to answer with ``method``: ``poly`` (under the expert mixture ``weights`` of
    pool ``version``), ``distilled`` (under the sites' generated factors in ``routing``),
    ``closed_book``, or a method the replica was given (``routing`` then holds what it reads:
    retrieved passage ids and scores, and for standard RAG their text)."""

    question: str
    max_new_tokens: int
    method: str = "poly"
    weights: torch.Tensor | None = None
    version: int | None = None
    routing: Routing | None = None


@dataclass(frozen=True)
class Generated:
    """One answer, or why the question could not be answered (``error`` names the field)."""

    answer: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    batch_size: int = 0
    error: str = ""


class Generator:
    """A serving replica (a Ray Serve deployment; see :func:`generator_deployment`)."""

    def __init__(self, model_spec: str, registry: str, poly: PolyConfig, threads: int = 1,
                 max_batch_size: int = 32, batch_wait_s: float = 0.01, extra: Mapping[str, MethodModel] | None = None,
                 distilled: bool = False):
        torch.set_num_threads(threads)
        self.base = load_causal_lm(model_spec, show_progress=False)
        self.engine = QueryEngine(self.base)
        self.registry = PoolRegistry(registry, self.base.digest)
        self.poly = poly
        self.pools: dict[int, PolyModel] = {}
        self.models: dict[str, MethodModel] = {"closed_book": ClosedBookModel(), **(extra or {})}
        self.distilled = distilled  # distilled mode: the sites' generated LoRAs, added up per request
        self.context = self.base.model.config.max_position_embeddings
        self._loading = threading.Lock()
        self.generate.set_max_batch_size(max_batch_size)
        self.generate.set_batch_wait_timeout_s(batch_wait_s)
        log.info("serve.generator.ready", model=self.base.path.name, threads=threads)

    def _pool(self, version: int) -> PolyModel:
        """Pool ``version`` as a model, loaded once from the registry."""
        with self._loading:
            if version not in self.pools:
                pool, _ = load_pool(self.registry.path(version), self.base.digest)
                self.pools[version] = PolyModel(pool, self.poly, name=f"poly@{version}")
                while len(self.pools) > POOLS_KEPT:
                    del self.pools[min(self.pools)]
                log.info("serve.generator.pool_loaded", version=version)
            return self.pools[version]

    def _model(self, item: GenerateItem) -> MethodModel:
        if item.method == "poly":
            return self._pool(item.version)
        if item.method == "distilled" and self.distilled:
            with self._loading:  # the mask token's vector, from the federation's generator, once
                if "distilled" not in self.models:
                    mask = GeneratorRegistry(self.registry.root, self.base.digest).mask_vector()
                    self.models["distilled"] = DistilledModel.served(self.base, mask)
        if item.method not in self.models:
            raise ValueError(f"method '{item.method}' is not served here (served: poly, {', '.join(self.models)})")
        return self.models[item.method]

    @staticmethod
    def _routing(item: GenerateItem) -> Routing:
        return Routing(weights=item.weights) if item.method == "poly" else item.routing or Routing()

    def _answer_group(self, items: list[GenerateItem]) -> list[Generated]:
        """One batched generate for items of one method, pool version and answer length. Each prompt
        is built and counted once; one over the model's context is refused, naming the question."""
        model, limit = self._model(items[0]), items[0].max_new_tokens
        routings = [self._routing(item) for item in items]
        lengths = [len(ids) for ids in self.base.tokenizer(model.prompts([i.question for i in items], routings)).input_ids]
        out = [Generated(error=f"question: {n} prompt tokens plus {limit} to generate is over this model's context "
                               f"of {self.context}") if n + limit > self.context else None for n in lengths]
        runnable = [i for i, done in enumerate(out) if done is None]
        if runnable:
            answers = self.engine.answer(model, [items[i].question for i in runnable], [routings[i] for i in runnable],
                                         limit)
            answer_lengths = [len(ids) for ids in self.base.tokenizer(answers).input_ids]
            for i, answer, n in zip(runnable, answers, answer_lengths):
                out[i] = Generated(answer, lengths[i], n, len(runnable))
        return out  # type: ignore[return-value]

    def _answer_batch(self, items: list[GenerateItem]) -> list[Generated]:
        return by_group(items, lambda item: (item.method, -1 if item.version is None else item.version,
                                             item.max_new_tokens),
                        self._answer_group, lambda exc: Generated(error=f"generation failed: {type(exc).__name__}"),
                        "serve.generator.failed")

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def generate(self, items: list[GenerateItem]) -> list[Generated]:
        """Answer every request collected in this batch (one forward pass per method and pool version)."""
        return await asyncio.to_thread(self._answer_batch, items)


def generator_deployment(replicas: int, min_replicas: int, max_replicas: int, cpus: float) -> serve.Deployment:
    """The generator as a Ray Serve deployment: ``replicas`` of them, or autoscaled when ``max_replicas`` is set."""
    options: dict = {"ray_actor_options": {"num_cpus": cpus}, "max_ongoing_requests": 64,
                     "health_check_period_s": 2.0, "graceful_shutdown_timeout_s": 5.0}
    if max_replicas:
        options["autoscaling_config"] = {"min_replicas": min_replicas, "initial_replicas": replicas,
                                         "max_replicas": max_replicas, "target_ongoing_requests": 16}
    else:
        options["num_replicas"] = replicas
    return serve.deployment(Generator, name="Generator").options(**options)
