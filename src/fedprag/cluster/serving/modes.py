"""The federation modes at the query API: how the sites' replies combine, and what answers with them.

The coordinator's half of each mode is :mod:`fedprag.coordinator.modes`, a site's
:mod:`fedprag.client.modes`; this is the query API's, under the same name. A query API serves one
mode: the fan-out skips a site that answers in another (:class:`~fedprag.cluster.serving.fanout.FanOut`).

* :class:`PoolServing` (``"poly"``): sites send expert mixtures, blended by score into one
  mixture per query; the learned query router can route with no site; the pool of the version
  routed with answers.
* :class:`GeneratorServing` (``"distilled"``): sites send the LoRA their generator made from their
  best passages, combined by score; only fan-out routes; the base model with the generator's mask
  token answers.

A third mode is one more class here and one entry in :data:`SERVING_MODES`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from fedprag.cluster.serving.fanout import blend_replies, combine_factor_replies
from fedprag.coordinator.registry import GeneratorRegistry, PoolRegistry
from fedprag.shared.io import dir_bytes
from fedprag.shared.methods.base import MethodModel, Routing
from fedprag.shared.methods.distilled.model import DistilledModel
from fedprag.shared.methods.poly.config import PolyConfig
from fedprag.shared.methods.poly.model import PolyModel
from fedprag.shared.models.loading import BaseModel
from fedprag.shared.wire import FactorReply, RoutingReply, WireMessage


class ServingMode(ABC):
    """One federation mode at the query API."""

    name: ClassVar[str]
    reply: ClassVar[type[WireMessage]]
    """What a site answers a routing request with in this mode."""
    noun: ClassVar[str]
    """What those replies carry, for the trace: "mixtures" or "factors"."""
    learned_router: ClassVar[bool]
    """Whether the learned query router can route this mode's queries with no site."""
    baselines: ClassVar[tuple[str, ...]]
    """What the demo's results table trains centrally, on the union of the sites' data, beside the
    federation's release."""

    @abstractmethod
    def combine(self, replies: Sequence[WireMessage], k: int, poly: PolyConfig) -> Routing:
        """One query's routing from every answering site's reply to it."""

    @abstractmethod
    def federated_model(self, registry: Path, base: BaseModel, poly: PolyConfig,
                        name: str) -> tuple[MethodModel, int]:
        """The model the latest release answers with, and the release's bytes on disk."""


class PoolServing(ServingMode):
    name, reply, noun, learned_router = "poly", RoutingReply, "mixtures", True
    baselines = ("closed_book", "standard_rag", "standard_rag_top1", "prag", "poly")

    def combine(self, replies: Sequence[RoutingReply], k: int, poly: PolyConfig) -> Routing:
        return blend_replies(replies, k, poly)

    def federated_model(self, registry: Path, base: BaseModel, poly: PolyConfig,
                        name: str) -> tuple[MethodModel, int]:
        pools = PoolRegistry(registry, base.digest)
        latest = pools.latest()
        if latest is None:
            raise RuntimeError("the federation published no pool; see the coordinator log")
        pool, manifest = latest
        return PolyModel(pool, poly, name=name), dir_bytes(pools.path(manifest["version"]))


class GeneratorServing(ServingMode):
    name, reply, noun, learned_router = "distilled", FactorReply, "factors", False
    baselines = ("closed_book", "standard_rag", "standard_rag_top1", "distilled")  # distilled: the starting generator

    def combine(self, replies: Sequence[FactorReply], k: int, poly: PolyConfig) -> Routing:
        return combine_factor_replies(replies, k, poly.score_temperature)

    def federated_model(self, registry: Path, base: BaseModel, poly: PolyConfig,
                        name: str) -> tuple[MethodModel, int]:
        """The base model with the generator's mask token; the sites hold the generator itself, so
        the query API holds no more than the base model (the bytes are the generator's)."""
        generators = GeneratorRegistry(registry, base.digest)
        versions = generators.versions()
        if not versions:
            raise RuntimeError("the federation published no generator; see the coordinator log")
        return DistilledModel.served(base, generators.mask_vector(), name=name), dir_bytes(generators.path(versions[-1]))


SERVING_MODES: dict[str, ServingMode] = {mode.name: mode for mode in (PoolServing(), GeneratorServing())}


def serving_mode(name: str) -> ServingMode:
    """The serving half of the mode ``federation.mode`` names."""
    try:
        return SERVING_MODES[name]
    except KeyError:
        raise ValueError(f"federation.mode: unknown '{name}' (known: {', '.join(SERVING_MODES)})") from None
