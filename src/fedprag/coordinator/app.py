"""The coordinator's Flower ServerApp: broadcast the shared model, collect updates, aggregate, checkpoint.

What the sites share is the federation's mode (``federation.mode``, :mod:`fedprag.coordinator.modes`):
Poly-PRAG's expert pool with the learned query router, or DistilledPRAG's generator. One round
loop drives either: each round sends the mode's task to every connected site, waits up to the round
timeout, validates every reply (a malformed or missing one is logged and left out), aggregates
once at least ``min_sites`` valid updates arrived, and publishes the result as a new registry
version. On start it resumes after the last published round.

After the last round the latest version is released to every connected site (message type
``query.release``): a site daemon serves with it (and, with a pool, encodes passages that arrive
later against it). A coordinator started when every round is done only releases.

Two entry points share :func:`run_rounds`: :func:`make_server_app` binds settings in-process (the
Ray simulation), and the module-level ``server_app`` is what a deployed SuperLink runs through
``flwr run``; it reads the fedprag TOML file named by the run config's ``config`` key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from flwr.app import Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedprag.coordinator.modes import FederationMode, mode_named
from fedprag.coordinator.privacy import DPSettings, epsilon
from fedprag.coordinator.registry import PoolRegistry, registry_dir
from fedprag.shared.config import CONFIG_ENV, FederationSection, FedpragConfig, load_config
from fedprag.shared.log import configure as configure_logging
from fedprag.shared.log import get_logger
from fedprag.shared.wire import GeneratorUpdate, ReleaseAck, SiteUpdate, WireError, record_bytes

log = get_logger(__name__)
U = TypeVar("U", SiteUpdate, GeneratorUpdate)
RELEASE = f"{MessageType.QUERY}.release"
PULL_INTERVAL = 0.2
"""Seconds between the coordinator's pulls for replies (Flower's deployed grid waits a fixed 3 s)."""


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


def run_rounds(grid: Grid, config: FedpragConfig, more_rounds: int = 0) -> None:
    """Run the remaining rounds up to ``federation.rounds`` of the federation's mode (with
    ``more_rounds``: that many after the last completed one), then release the result; each
    round's report goes to the registry. One campaign at a time per registry: a second is refused."""
    federation = config.federation
    with campaign_lock(registry_dir(federation)):
        mode = mode_named(federation.mode).start(config)
        last = mode.done + more_rounds if more_rounds else federation.rounds
        for number in range(mode.done + 1, last + 1):
            run_round(grid, mode, federation, number)
        release(grid, mode, federation)


@contextlib.contextmanager
def campaign_lock(registry: Path) -> Iterator[None]:
    """Hold ``<registry>/.campaign.lock`` while a campaign runs; raises if another holds it."""
    registry.mkdir(parents=True, exist_ok=True)
    with open(registry / ".campaign.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another campaign is running on {registry}; this one starts nothing") from None
        yield


def run_round(grid: Grid, mode: FederationMode, federation: FederationSection, number: int) -> None:
    """One round: the mode's tasks to the connected sites, their valid updates aggregated and
    published (with enough of them), and the round's report recorded."""
    nodes = sorted(_wait_for_sites(grid, federation.min_sites, federation.round_timeout))
    started = time.perf_counter()
    messages = [Message(task, dst_node_id=node, message_type=MessageType.TRAIN)
                for task, node in zip(mode.tasks(number, len(nodes)), nodes)]
    log.info("coordinator.round.start", round=number, sites=len(nodes), mode=mode.name, version=mode.version)
    replies = exchange(grid, messages, federation.round_timeout)
    report = RoundReport(round=number, version=None)
    updates = _collect(replies, mode.accept, report)
    if len(updates) < federation.min_sites:
        log.error("coordinator.round.incomplete", round=number, valid=len(updates), needed=federation.min_sites)
    else:
        aggregate_and_publish(mode, updates, report, len(nodes))
    report.seconds = time.perf_counter() - started
    mode.registry.record_round(dataclasses.asdict(report))


def exchange(grid: Grid, messages: Sequence[Message], timeout: float) -> list[Message]:
    """Send ``messages`` and return the replies that arrive within ``timeout`` s.

    This is ``Grid.send_and_receive``, polling every :data:`PULL_INTERVAL` s: Flower's deployed
    grid sleeps 3 s between pulls, so each exchange would end up to 3 s after its last reply.
    """
    pending = {sent for sent in grid.push_messages(messages) if sent}  # a message not pushed gets no reply
    deadline = time.monotonic() + timeout
    replies: list[Message] = []
    while pending:
        arrived = list(grid.pull_messages(pending))
        replies.extend(arrived)
        pending -= {reply.metadata.reply_to_message_id for reply in arrived}
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(PULL_INTERVAL)
    return replies


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


def _round_metrics(report: RoundReport, updates: Sequence[U], dp: DPSettings | None,
                   weight: Callable[[U], int]) -> dict[str, float]:
    """The metrics published with a round's result (ε with DP on; else the sites' weighted loss), also set on ``report``."""
    metrics = {"sites": float(len(updates))}
    if dp is not None:
        report.epsilon = metrics["epsilon"] = epsilon(report.round, dp.noise_multiplier, dp.delta)
        metrics["dp_noise_multiplier"] = dp.noise_multiplier
    else:
        report.loss = metrics["loss"] = sum(u.loss * weight(u) for u in updates) / sum(weight(u) for u in updates)
    return metrics


def aggregate_and_publish(mode: FederationMode, updates: Sequence[U], report: RoundReport, sites_asked: int) -> int:
    """Aggregate a round's valid updates, publish the result, fill in ``report``; returns the version.

    With DP on the mode's private aggregate is used (clipped changes, weights bounded per site,
    Gaussian noise from the OS; :mod:`fedprag.coordinator.privacy`), ε is recorded, and the
    un-noised training loss is neither published nor recorded.
    """
    mode.aggregate(updates, sites_asked)
    report.version = mode.publish(report.round, updates, _round_metrics(report, updates, mode.dp, mode.weight))
    log.info("coordinator.round.done", round=report.round, version=report.version, sites=len(updates),
             loss=None if report.loss is None else round(report.loss, 4), epsilon=report.epsilon)
    return report.version


def release(grid: Grid, mode: FederationMode, federation: FederationSection) -> None:
    """Send the mode's latest version to every connected site; log which sites kept it."""
    nodes = _wait_for_sites(grid, federation.min_sites, federation.round_timeout)
    record = mode.release()
    replies = exchange(grid, [Message(record, dst_node_id=node, message_type=RELEASE) for node in nodes],
                       federation.round_timeout)
    acks = _acks(replies)
    mode.released(acks)
    log.info("coordinator.release.done", mode=mode.name, version=mode.version, sites=len(acks), asked=len(nodes))


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
        log.info("coordinator.release.kept", site=ack.site, version=ack.version, encoded=ack.encoded,
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
    """The coordinator as a SuperLink runs it: settings from the TOML file in ``run_config['config']``,
    else from the one :data:`CONFIG_ENV` names (the coordinator's own, for a campaign an operator
    starts from elsewhere). ``run_config['rounds']``, when above 0, is the campaign's total rounds;
    ``run_config['more_rounds']``, when above 0, the rounds it runs after the last completed one."""
    configure_logging()  # this process is flwr-serverapp; its stderr streams to ``flwr run``
    rounds = int(context.run_config.get("rounds", 0))
    run_rounds(grid, load_config(str(context.run_config.get("config", "")) or os.environ.get(CONFIG_ENV) or None,
                                 {"federation.rounds": rounds} if rounds > 0 else None),
               int(context.run_config.get("more_rounds", 0)))
