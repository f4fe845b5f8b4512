"""The coordinator's Flower ServerApp: broadcast the shared model, collect updates, aggregate, checkpoint.

What the sites share depends on ``federation.mode``: Poly-PRAG's expert pool (with the learned
query router), or DistilledPRAG's generator. Each round sends a task
(:class:`~fedprag.shared.wire.RoundTask` or :class:`~fedprag.shared.wire.GeneratorTask`) to every
connected site, waits up to the round timeout, validates every reply (a malformed or missing one is
logged and left out), aggregates with the mode's strategy once at least ``min_sites`` valid updates
arrived, and publishes the result as a new registry version. On start it resumes after the last
published round.

After the last round the latest version is released to every connected site
(:class:`~fedprag.shared.wire.PoolRelease` or :class:`~fedprag.shared.wire.GeneratorRelease`,
message type ``query.release``): a site daemon serves with it (and, with a pool, encodes passages
that arrive later against it). A coordinator started when every round is done only releases.

Two entry points share :func:`run_rounds`: :func:`make_server_app` binds settings in-process (the
Ray simulation), and the module-level ``server_app`` is what a deployed SuperLink runs through
``flwr run``; it reads the fedprag TOML file named by the run config's ``config`` key.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from flwr.app import Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedprag.coordinator.privacy import DPSettings, epsilon
from fedprag.coordinator.registry import GeneratorRegistry, PoolRegistry
from fedprag.coordinator.strategy import GeneratorAveraging, PoolStrategy, strategy_named
from fedprag.shared.config import FederationSection, FedpragConfig, load_config
from fedprag.shared.log import configure as configure_logging
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
    WireError,
    record_bytes,
)

log = get_logger(__name__)
U = TypeVar("U", SiteUpdate, GeneratorUpdate)


@dataclass
class RoundReport:
    """What one round did: who answered, who was left out and why, and the bytes each site sent."""

    round: int
    version: int | None
    accepted: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    bytes_per_site: dict[str, int] = field(default_factory=dict)
    loss: float | None = None  # the sites' weighted training loss; never recorded with DP on (it is not noised)
    epsilon: float | None = None  # (ε, δ) so far, when differential privacy is on
    seconds: float | None = None  # the round's wall time at the coordinator: broadcast to publish


def registry_dir(federation: FederationSection) -> Path:
    """Where the coordinator publishes pool versions: ``<work_dir>/registry``."""
    return Path(federation.work_dir) / "registry"


def recorded_rounds(registry: str | Path) -> list[RoundReport]:
    """Every round the coordinator has recorded under ``registry``, oldest first."""
    return [RoundReport(**summary) for summary in PoolRegistry.rounds_at(registry)]


def _wait_for_sites(grid: Grid, minimum: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= minimum or time.monotonic() > deadline:
            return nodes
        time.sleep(1.0)


def run_rounds(grid: Grid, config: FedpragConfig) -> None:
    """Run the remaining rounds up to ``federation.rounds`` of the mode the federation trains
    (``federation.mode``), then release the result; each round's report goes to the registry."""
    if config.federation.mode == "distilled":
        run_generator_rounds(grid, config.model.path, config.distilled, config.federation)
    else:
        run_pool_rounds(grid, config.model.path, config.poly, config.federation)


def _dp(federation: FederationSection) -> DPSettings | None:
    return (DPSettings(federation.dp_clip, federation.dp_noise_multiplier, federation.dp_delta)
            if federation.dp_noise_multiplier > 0 else None)


def _check_dp_resume(dp: DPSettings | None, done: int, manifest: dict | None) -> None:
    """Refuse to resume with DP on a registry whose earlier rounds ran without it, or with another σ
    (``manifest``: the latest version's, present whenever rounds are ``done``)."""
    if dp is not None and done > 0 and manifest is not None and manifest["metrics"].get("dp_noise_multiplier") != dp.noise_multiplier:
        raise ValueError(f"federation.dp_noise_multiplier: rounds 1–{done} of this registry ran "
                         f"{'without DP' if 'epsilon' not in manifest['metrics'] else 'with another noise multiplier'}, "
                         "so ε over all rounds is not what DP on would report; start a new work_dir")


def _collect(replies: Iterable[Message], accept: Callable[[RecordDict], U], report: RoundReport) -> list[U]:
    """The valid updates among a round's replies; every other reply is named in ``report`` with
    its reason (a site's error, or what the schema or the strategy refused)."""
    updates = []
    for reply in replies:
        node = str(reply.metadata.src_node_id)
        if reply.has_error():
            lines = [line for line in reply.error.reason.splitlines() if line.strip()] or ["(no reason)"]
            report.rejected[node] = f"site error: {lines[-1].strip()}"[:160]
            continue
        try:
            update = accept(reply.content)
        except WireError as exc:
            report.rejected[node] = str(exc)[:160]
            continue
        updates.append(update)
        report.accepted.append(update.site)
        report.bytes_per_site[update.site] = record_bytes(reply.content)
    for node, reason in report.rejected.items():
        log.warning("coordinator.update.rejected", round=report.round, node=node, reason=reason)
    return updates


def _round_metrics(report: RoundReport, updates: Sequence[SiteUpdate | GeneratorUpdate], dp: DPSettings | None,
                   weight: Callable[[SiteUpdate | GeneratorUpdate], int]) -> dict[str, float]:
    """The metrics published with a round's result (ε with DP on; else the sites' weighted loss), also set on ``report``."""
    metrics = {"sites": float(len(updates))}
    if dp is not None:
        report.epsilon = metrics["epsilon"] = epsilon(report.round, dp.noise_multiplier, dp.delta)
        metrics["dp_noise_multiplier"] = dp.noise_multiplier
    else:
        report.loss = metrics["loss"] = sum(u.loss * weight(u) for u in updates) / sum(weight(u) for u in updates)
    return metrics


def run_pool_rounds(grid: Grid, model_spec: str, poly: PolyConfig, federation: FederationSection) -> None:
    """Poly-PRAG's rounds: train the expert pool and the learned query router, then release them."""
    base = load_causal_lm(model_spec)
    registry = PoolRegistry(registry_dir(federation), base.digest)
    latest = registry.latest()
    modules = placed(attach_lora(base.model), poly.layers, poly.targets)
    if latest is None:
        pool = ExpertPool.initialised(modules, poly.n_experts, poly.rank, poly.scale, poly.routing, poly.seed)
        version, done, manifest = registry.publish(pool, poly, 0, {}), 0, None
    else:
        pool, manifest = latest
        if sorted(pool.names) != sorted(modules) or (pool.n_experts, pool.rank) != (poly.n_experts, poly.rank):
            raise ValueError(f"poly: the pool in {registry.root} ({pool.n_experts} experts of rank {pool.rank} on "
                             f"{len(pool.names)} modules) is not the one poly configures ({poly.n_experts} of rank "
                             f"{poly.rank} on {len(modules)}); start a new federation.work_dir")
        version, done = manifest["version"], manifest["round"]
        log.info("coordinator.resume", version=version, completed_round=done)
    strategy = strategy_named(federation.strategy)
    dp = _dp(federation)
    _check_dp_resume(dp, done, manifest)
    settings = {**poly.to_numbers(), "epochs": float(federation.local_epochs),
                "home_experts": float(federation.home_experts)}
    router = starting_router(registry, pool, version, poly)
    if dp is not None:  # the router's updates would bypass the clipping and noise that bound ε
        log.info("coordinator.router.off", reason="central DP is on; the learned router is not trained")
    for number in range(done + 1, federation.rounds + 1):
        nodes = _wait_for_sites(grid, federation.min_sites, federation.round_timeout)
        started = time.perf_counter()
        experts, router_now = pool_arrays(pool), ({} if dp is not None else router_arrays(router))
        messages = [Message(RoundTask(round=number, pool_version=version, experts=experts, router=router_now,
                                      settings={**settings, "home_block": float(block)}).to_record(),
                            dst_node_id=node, message_type=MessageType.TRAIN)
                    for block, node in enumerate(sorted(nodes))]
        log.info("coordinator.round.start", round=number, sites=len(nodes), pool_version=version)
        replies = grid.send_and_receive(messages, timeout=federation.round_timeout)
        report = RoundReport(round=number, version=None)
        updates = _collect(replies, lambda content, pool=pool: strategy.validate(SiteUpdate.from_record(content), pool),
                           report)
        if len(updates) < federation.min_sites:
            log.error("coordinator.round.incomplete", round=number, valid=len(updates), needed=federation.min_sites)
        else:
            pool, version = aggregate_and_publish(registry, strategy, pool, updates, report, poly, dp, len(nodes))
            router = federated_router(updates, router) or router
            registry.save_router(version, router, draft=True)
        report.seconds = time.perf_counter() - started
        registry.record_round(dataclasses.asdict(report))
    release(grid, registry, pool, None if dp is not None else router, version, poly, federation)


RELEASE = f"{MessageType.QUERY}.release"


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


def release(grid: Grid, registry: PoolRegistry, pool: ExpertPool, router: QueryRouter | None, version: int,
            poly: PolyConfig, federation: FederationSection) -> None:
    """Send pool ``version`` and the learned query router to every connected site; log which sites
    kept it; publish the router after the sites' last steps on it, against their final rows (no
    router without one, as under central DP)."""
    nodes = _wait_for_sites(grid, federation.min_sites, federation.round_timeout)
    record = PoolRelease(pool_version=version, experts=pool_arrays(pool), settings=poly.to_numbers(),
                         router=router_arrays(router) if router is not None else {}).to_record()
    replies = grid.send_and_receive([Message(record, dst_node_id=node, message_type=RELEASE) for node in nodes],
                                    timeout=federation.round_timeout)
    acks = _acks(replies)
    if router is not None:
        registry.save_router(version, federated_router(acks, router) or router)
    log.info("coordinator.release.done", pool_version=version, sites=len(acks), asked=len(nodes),
             router_questions=sum(a.questions for a in acks))


def aggregate_and_publish(registry: PoolRegistry, strategy: PoolStrategy, pool: ExpertPool,
                          updates: list[SiteUpdate], report: RoundReport, poly: PolyConfig, dp: DPSettings | None,
                          sites_asked: int) -> tuple[ExpertPool, int]:
    """Aggregate a round's valid updates, publish the pool, fill in ``report``.

    With ``dp`` the strategy's private aggregate is used (clipped changes, weights bounded per
    site, Gaussian noise from the OS; :mod:`fedprag.coordinator.privacy`), ε is recorded, and the
    un-noised training loss is neither published nor recorded.
    """
    number = report.round
    pool = strategy.private_aggregate(pool, updates, dp, sites_asked) if dp else strategy.aggregate(pool, updates)
    report.version = registry.publish(pool, poly, number, _round_metrics(report, updates, dp, lambda u: u.passages))
    log.info("coordinator.round.done", round=number, version=report.version, sites=len(updates),
             loss=None if report.loss is None else round(report.loss, 4), epsilon=report.epsilon)
    return pool, report.version


def run_generator_rounds(grid: Grid, model_spec: str, distilled: DistilledConfig, federation: FederationSection) -> None:
    """DistilledPRAG's rounds: every site distils the generator on its own documents, the
    coordinator averages the sites' generators (:class:`GeneratorAveraging`), publishes each round's
    as a version, and releases the last to every site."""
    base = load_causal_lm(model_spec)
    layers = attach_lora(base.model)
    registry = GeneratorRegistry(registry_dir(federation), base.digest)
    latest = registry.latest(base, layers)
    if latest is None:
        encoder, done, manifest = starting_encoder(base, layers, distilled), 0, None
        version = registry.publish(encoder, 0, {})
    else:
        encoder, manifest = latest
        stored = encoder.generator.config
        changed = [name for name in DistilledConfig.SHAPE if getattr(stored, name) != getattr(distilled, name)]
        if changed:
            raise ValueError(f"distilled.{changed[0]}: the generator in {registry.root} was made with "
                             f"{changed[0]} = {getattr(stored, changed[0])!r}, not {getattr(distilled, changed[0])!r} "
                             "as configured; configure it back or start a new federation.work_dir")
        version, done = manifest["version"], manifest["round"]
        log.info("coordinator.resume", version=version, completed_round=done)
    dp = _dp(federation)
    _check_dp_resume(dp, done, manifest)
    strategy, settings = GeneratorAveraging(), distilled.to_numbers()
    for number in range(done + 1, federation.rounds + 1):
        nodes = _wait_for_sites(grid, federation.min_sites, federation.round_timeout)
        started = time.perf_counter()
        current = generator_arrays(encoder)
        task = GeneratorTask(round=number, version=version, generator=current, settings=settings).to_record()
        log.info("coordinator.round.start", round=number, sites=len(nodes), generator_version=version)
        replies = grid.send_and_receive([Message(task, dst_node_id=node, message_type=MessageType.TRAIN)
                                         for node in sorted(nodes)], timeout=federation.round_timeout)
        report = RoundReport(round=number, version=None)
        updates = _collect(replies, lambda content, current=current: strategy.validate(
            GeneratorUpdate.from_record(content), current), report)
        if len(updates) < federation.min_sites:
            log.error("coordinator.round.incomplete", round=number, valid=len(updates), needed=federation.min_sites)
        else:
            merged = (strategy.private_aggregate(current, updates, dp, len(nodes)) if dp
                      else strategy.aggregate(current, updates))
            load_arrays(encoder, merged)
            version = report.version = registry.publish(encoder, number,
                                                        _round_metrics(report, updates, dp, lambda u: u.qa_pairs))
            log.info("coordinator.round.done", round=number, version=version, sites=len(updates),
                     loss=None if report.loss is None else round(report.loss, 4), epsilon=report.epsilon)
        report.seconds = time.perf_counter() - started
        registry.record_round(dataclasses.asdict(report))
    release_generator(grid, encoder, version, distilled, federation)


def release_generator(grid: Grid, encoder: DistilledEncoder, version: int, distilled: DistilledConfig,
                      federation: FederationSection) -> None:
    """Send generator ``version`` to every connected site (it answers queries with it); log which kept it."""
    nodes = _wait_for_sites(grid, federation.min_sites, federation.round_timeout)
    record = GeneratorRelease(version=version, generator=generator_arrays(encoder),
                              settings=distilled.to_numbers()).to_record()
    replies = grid.send_and_receive([Message(record, dst_node_id=node, message_type=RELEASE) for node in nodes],
                                    timeout=federation.round_timeout)
    kept = [ack.site for ack in _acks(replies)]
    log.info("coordinator.release.done", generator_version=version, sites=len(kept), asked=len(nodes))


def _acks(replies: Iterable[Message]) -> list[ReleaseAck]:
    """The valid release acknowledgements among ``replies``; each is logged, and so is every failure."""
    acks = []
    for reply in replies:
        try:
            ack = ReleaseAck.from_record(reply.content) if not reply.has_error() else None
        except WireError:
            ack = None
        if ack is None:
            log.warning("coordinator.release.failed", node=str(reply.metadata.src_node_id))
            continue
        acks.append(ack)
        log.info("coordinator.release.kept", site=ack.site, version=ack.pool_version, encoded=ack.encoded,
                 pending=ack.pending)
    return acks


def make_server_app(config: FedpragConfig) -> ServerApp:
    """A ServerApp bound to its settings (the in-process simulation runtime)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_rounds(grid, config)

    return app


server_app = ServerApp()


@server_app.main()
def deployed_main(grid: Grid, context: Context) -> None:
    """The coordinator as a SuperLink runs it: settings from the TOML file in ``run_config['config']``."""
    configure_logging()  # this process is flwr-serverapp; its stderr streams to ``flwr run``
    run_rounds(grid, load_config(str(context.run_config.get("config", "")) or None))
