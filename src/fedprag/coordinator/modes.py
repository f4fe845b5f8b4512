"""The federation modes: what the coordinator's rounds train, one class per mode.

A mode has the shape of a Flower strategy: it starts its shared model (or resumes it from the
registry), says what each site is asked in a round, validates and aggregates the sites' replies
(privately, with central DP on), publishes each result as a registry version, and makes the release
sent after the last round. :func:`fedprag.coordinator.app.run_rounds` is the one round loop that
drives any of them; a third mode is one more class here and one entry in :data:`MODES`.

* :class:`PoolMode` (``federation.mode = "poly"``): Poly-PRAG's shared expert pool, aggregated by
  ``federation.strategy``, and the learned query router, FedAvg-ed from the sites' steps on it.
* :class:`GeneratorMode` (``"distilled"``): DistilledPRAG's generator, FedAvg-ed by QA pairs.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar, Generic, TypeVar

import numpy as np
import torch
from flwr.app import RecordDict

from fedprag.coordinator.privacy import DPSettings
from fedprag.coordinator.registry import GeneratorRegistry, PoolRegistry, VersionedRegistry, registry_dir
from fedprag.coordinator.strategy import GeneratorAveraging, strategy_named
from fedprag.shared.config import FederationSection, FedpragConfig
from fedprag.shared.log import get_logger
from fedprag.shared.lora.layers import attach_lora
from fedprag.shared.methods.distilled.config import DistilledConfig
from fedprag.shared.methods.distilled.serializer import generator_arrays, load_arrays, starting_encoder
from fedprag.shared.methods.distilled.trainer import DistilledEncoder
from fedprag.shared.methods.poly.config import PolyConfig
from fedprag.shared.methods.poly.layers import ExpertPool, QueryRouter, placed
from fedprag.shared.methods.poly.serializer import pool_arrays, router_arrays
from fedprag.shared.models.loading import load_causal_lm
from fedprag.shared.retrieval.encoder import EMBEDDING_DIM
from fedprag.shared.wire import (
    GeneratorRelease,
    GeneratorTask,
    GeneratorUpdate,
    PoolRelease,
    ReleaseAck,
    RoundTask,
    SiteUpdate,
)

log = get_logger(__name__)
U = TypeVar("U", SiteUpdate, GeneratorUpdate)


def dp_settings(federation: FederationSection) -> DPSettings | None:
    """Central DP's settings, or ``None`` while ``federation.dp_noise_multiplier`` is 0 (off)."""
    return (DPSettings(federation.dp_clip, federation.dp_noise_multiplier, federation.dp_delta)
            if federation.dp_noise_multiplier > 0 else None)


class FederationMode(ABC, Generic[U]):
    """One kind of shared model the rounds train, from its start to its release.

    ``version`` is the latest published version and ``done`` the rounds already published (both 0
    for a new federation). A mode refuses to resume with DP on a registry whose earlier rounds ran
    without it, or with another noise multiplier: ε over all rounds would not be what it reports.
    """

    name: ClassVar[str]

    def __init__(self, registry: VersionedRegistry, version: int, done: int, manifest: dict | None,
                 federation: FederationSection):
        self.registry, self.version, self.done = registry, version, done
        self.dp = dp_settings(federation)
        if self.dp is not None and done > 0 and manifest is not None \
                and manifest["metrics"].get("dp_noise_multiplier") != self.dp.noise_multiplier:
            raise ValueError(f"federation.dp_noise_multiplier: rounds 1–{done} of this registry ran "
                             f"{'without DP' if 'epsilon' not in manifest['metrics'] else 'with another noise multiplier'}"
                             ", so ε over all rounds is not what DP on would report; start a new work_dir")
        if done:
            log.info("coordinator.resume", mode=self.name, version=version, completed_round=done)

    @classmethod
    @abstractmethod
    def start(cls, config: FedpragConfig) -> FederationMode:
        """The mode for ``config``: a new shared model published as version 0, or the registry's latest."""

    @abstractmethod
    def tasks(self, number: int, sites: int) -> list[RecordDict]:
        """What each of ``sites`` sites is asked in round ``number``, in the order of their node ids."""

    @abstractmethod
    def accept(self, content: RecordDict) -> U:
        """A site's reply as a validated update; a :class:`~fedprag.shared.wire.WireError` says why not."""

    @abstractmethod
    def weight(self, update: U) -> int:
        """``update``'s weight in the round's reported loss."""

    @abstractmethod
    def aggregate(self, updates: Sequence[U], sites_asked: int) -> None:
        """Fold a round's valid updates into the shared model (the private aggregate with DP on)."""

    @abstractmethod
    def publish(self, number: int, updates: Sequence[U], metrics: dict[str, float]) -> int:
        """Publish the shared model after round ``number`` as a new version; returns it."""

    @abstractmethod
    def release(self) -> RecordDict:
        """What every site receives after the last round: the latest version, to serve with."""

    def released(self, acks: Sequence[ReleaseAck]) -> None:
        """What the sites' acknowledgements of the release add (nothing, unless a mode says)."""


class PoolMode(FederationMode[SiteUpdate]):
    """Poly-PRAG: train the shared expert pool and the learned query router.

    Under central DP the router is neither trained nor released: its updates would bypass the
    clipping and noise that bound ε.
    """

    name = "poly"

    def __init__(self, registry: PoolRegistry, pool: ExpertPool, version: int, done: int, manifest: dict | None,
                 poly: PolyConfig, federation: FederationSection):
        super().__init__(registry, version, done, manifest, federation)
        self.registry: PoolRegistry = registry
        self.pool, self.poly = pool, poly
        self.strategy = strategy_named(federation.strategy)
        self.settings = {**poly.to_numbers(), "epochs": float(federation.local_epochs),
                         "home_experts": float(federation.home_experts)}
        self.router = None if self.dp is not None else starting_router(registry, pool, version, poly)
        if self.dp is not None:
            log.info("coordinator.router.off", reason="central DP is on; the learned router is not trained")

    @classmethod
    def start(cls, config: FedpragConfig) -> PoolMode:
        poly, federation = config.poly, config.federation
        base = load_causal_lm(config.model.path)
        registry = PoolRegistry(registry_dir(federation), base.digest)
        modules = placed(attach_lora(base.model), poly.layers, poly.targets)
        latest = registry.latest()
        if latest is None:
            pool = ExpertPool.initialised(modules, poly.n_experts, poly.rank, poly.scale, poly.routing, poly.seed)
            return cls(registry, pool, registry.publish(pool, poly, 0, {}), 0, None, poly, federation)
        pool, manifest = latest
        if sorted(pool.names) != sorted(modules) or (pool.n_experts, pool.rank) != (poly.n_experts, poly.rank):
            raise ValueError(f"poly: the pool in {registry.root} ({pool.n_experts} experts of rank {pool.rank} on "
                             f"{len(pool.names)} modules) is not the one poly configures ({poly.n_experts} of rank "
                             f"{poly.rank} on {len(modules)}); start a new federation.work_dir")
        return cls(registry, pool, manifest["version"], manifest["round"], manifest, poly, federation)

    def tasks(self, number: int, sites: int) -> list[RecordDict]:
        experts, router = pool_arrays(self.pool), router_arrays(self.router) if self.router is not None else {}
        return [RoundTask(round=number, version=self.version, experts=experts, router=router,
                          settings={**self.settings, "home_block": float(block)}).to_record() for block in range(sites)]

    def accept(self, content: RecordDict) -> SiteUpdate:
        return self.strategy.validate(SiteUpdate.from_record(content), self.pool)

    def weight(self, update: SiteUpdate) -> int:
        return update.passages

    def aggregate(self, updates: Sequence[SiteUpdate], sites_asked: int) -> None:
        self.pool = (self.strategy.private_aggregate(self.pool, updates, self.dp, sites_asked) if self.dp is not None
                     else self.strategy.aggregate(self.pool, updates))

    def publish(self, number: int, updates: Sequence[SiteUpdate], metrics: dict[str, float]) -> int:
        """Publish the pool; the router the sites stepped on is kept with it as a draft (the rounds
        continue it after a restart), published only at the release."""
        self.version = self.registry.publish(self.pool, self.poly, number, metrics)
        if self.router is not None:
            self.router = federated_router(updates, self.router) or self.router
            self.registry.save_router(self.version, self.router, draft=True)
        return self.version

    def release(self) -> RecordDict:
        return PoolRelease(version=self.version, experts=pool_arrays(self.pool), settings=self.poly.to_numbers(),
                           router=router_arrays(self.router) if self.router is not None else {}).to_record()

    def released(self, acks: Sequence[ReleaseAck]) -> None:
        """Publish the router after the sites' last steps on it, against their final rows."""
        if self.router is not None:
            self.registry.save_router(self.version, federated_router(acks, self.router) or self.router)
            log.info("coordinator.router.published", version=self.version, questions=sum(a.questions for a in acks))


def starting_router(registry: PoolRegistry, pool: ExpertPool, version: int, poly: PolyConfig) -> QueryRouter:
    """The learned query router the rounds continue: the rounds' draft kept with ``version`` (a
    resumed federation), else a new one seeded by ``poly.seed``."""
    if version in registry.versions_with_router(draft=True):
        return registry.router(version, draft=True)
    torch.manual_seed(poly.seed)
    return QueryRouter(EMBEDDING_DIM, pool.n_groups, pool.n_experts, poly.router_hidden).eval().requires_grad_(False)


def federated_router(shares: Sequence[SiteUpdate | ReleaseAck], like: QueryRouter) -> QueryRouter | None:
    """FedAvg of the sites' steps on the learned query router ``like``, weighted by their question
    counts; ``None`` if no site sent one. A router of another shape than ``like`` is left out."""
    expected = {name: tuple(t.shape) for name, t in like.state_dict().items()}
    usable = []
    for share in shares:
        if share.questions and share.router:
            if {name: tuple(np.shape(a)) for name, a in share.router.items()} == expected:
                usable.append(share)
            else:
                log.warning("coordinator.router.rejected", site=share.site)
    if not usable:
        return None
    total = sum(share.questions for share in usable)
    merged = copy.deepcopy(like)
    merged.load_state_dict({name: torch.from_numpy(sum(np.asarray(s.router[name], dtype=np.float32) * (s.questions / total)
                                                       for s in usable)) for name in expected})
    return merged.eval().requires_grad_(False)


class GeneratorMode(FederationMode[GeneratorUpdate]):
    """DistilledPRAG: every site distils the generator on its own documents; the coordinator
    averages the sites' generators (:class:`~fedprag.coordinator.strategy.GeneratorAveraging`)."""

    name = "distilled"

    def __init__(self, registry: GeneratorRegistry, encoder: DistilledEncoder, version: int, done: int,
                 manifest: dict | None, distilled: DistilledConfig, federation: FederationSection):
        super().__init__(registry, version, done, manifest, federation)
        self.registry: GeneratorRegistry = registry
        self.encoder, self.settings = encoder, distilled.to_numbers()
        self.strategy = GeneratorAveraging()
        self.broadcast: dict[str, np.ndarray] = {}  # the generator this round's tasks carry

    @classmethod
    def start(cls, config: FedpragConfig) -> GeneratorMode:
        distilled, federation = config.distilled, config.federation
        base = load_causal_lm(config.model.path)
        layers = attach_lora(base.model)
        registry = GeneratorRegistry(registry_dir(federation), base.digest)
        latest = registry.latest(base, layers)
        if latest is None:
            encoder = starting_encoder(base, layers, distilled)
            return cls(registry, encoder, registry.publish(encoder, 0, {}), 0, None, distilled, federation)
        encoder, manifest = latest
        stored = encoder.generator.config
        changed = [name for name in DistilledConfig.SHAPE if getattr(stored, name) != getattr(distilled, name)]
        if changed:
            raise ValueError(f"distilled.{changed[0]}: the generator in {registry.root} was made with "
                             f"{changed[0]} = {getattr(stored, changed[0])!r}, not {getattr(distilled, changed[0])!r} "
                             "as configured; configure it back or start a new federation.work_dir")
        return cls(registry, encoder, manifest["version"], manifest["round"], manifest, distilled, federation)

    def tasks(self, number: int, sites: int) -> list[RecordDict]:
        self.broadcast = generator_arrays(self.encoder)
        task = GeneratorTask(round=number, version=self.version, generator=self.broadcast, settings=self.settings)
        return [task.to_record()] * sites

    def accept(self, content: RecordDict) -> GeneratorUpdate:
        return self.strategy.validate(GeneratorUpdate.from_record(content), self.broadcast)

    def weight(self, update: GeneratorUpdate) -> int:
        return update.qa_pairs

    def aggregate(self, updates: Sequence[GeneratorUpdate], sites_asked: int) -> None:
        merged = (self.strategy.private_aggregate(self.broadcast, updates, self.dp, sites_asked) if self.dp is not None
                  else self.strategy.aggregate(self.broadcast, updates))
        load_arrays(self.encoder, merged)

    def publish(self, number: int, updates: Sequence[GeneratorUpdate], metrics: dict[str, float]) -> int:
        self.version = self.registry.publish(self.encoder, number, metrics)
        return self.version

    def release(self) -> RecordDict:
        return GeneratorRelease(version=self.version, generator=generator_arrays(self.encoder),
                                settings=self.settings).to_record()


MODES: dict[str, type[FederationMode]] = {mode.name: mode for mode in (PoolMode, GeneratorMode)}


def mode_named(name: str) -> type[FederationMode]:
    """The mode class ``federation.mode`` names, with an error listing the known ones."""
    try:
        return MODES[name]
    except KeyError:
        raise ValueError(f"federation.mode: unknown '{name}' (known: {', '.join(MODES)})") from None
