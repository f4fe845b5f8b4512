"""A real Flower deployment on one machine: the coordinator and every site as separate processes.

:class:`LocalDeployment` is what ``fedprag federate`` and ``fedprag demo`` run by default:

1. TLS material and one authentication key pair per site (:mod:`fedprag.cluster.certs`), kept under
   ``<work_dir>/certs`` and reused on the next start;
2. ``flower-superlink`` with TLS and SuperNode authentication on a free loopback port
   (:class:`~fedprag.cluster.superlink.SuperLink`);
3. each site's public key registered through its Control API — a SuperNode whose key is not
   registered is refused;
4. one site daemon (``fedprag client run``) per site, serving that site's data directory: it keeps
   the site's SuperNode connected and serves the site's routing over gRPC, with a certificate from
   the same CA and a caller token (``<work_dir>/certs/routing-tokens``);
5. ``flwr run`` of the fedprag Flower app: its ServerApp is :data:`fedprag.coordinator.app.server_app`,
   its ClientApp :data:`fedprag.client.app.client_app`, and its only run setting is the path of the
   fedprag TOML file the coordinator reads.

With ``rounds=False`` (the simulation runtime has already trained) only the site daemons start,
serving routing with the pool the simulation released to their stores.

Each process runs in its own session, logs to ``<work_dir>/logs/<name>.log`` (``pids.json``
lists them) and is stopped through its process group by PID. Flower's SuperExec and the apps it
launches run in sessions of their own, so the deployment also keeps track of every descendant of
its processes while they run, and stops those too, even after their parent died. A site's
SuperNode logs (with its ClientApp's) under the site's own data directory, so they stay with the site.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Self, TextIO

import grpc

from fedprag.client.admin import DAEMON_FILE, daemon_status
from fedprag.cluster.certs import NodeKeys, TlsFiles, write_node_keys, write_routing_cert, write_tls
from fedprag.cluster.serving.fanout import RemoteSite
from fedprag.cluster.simulation import simulate
from fedprag.cluster.superlink import SuperLink, SuperLinkError
from fedprag.coordinator.app import RoundReport, recorded_rounds
from fedprag.coordinator.registry import registry_dir
from fedprag.shared.config import FedpragConfig, SiteSection, config_to_toml
from fedprag.shared.io import atomic_write_text, read_tokens
from fedprag.shared.log import get_logger
from fedprag.shared.models.augment_config import AugmentConfig
from fedprag.shared.processes import Processes, Started, bin_path, flower_env, stop
from fedprag.shared.proto import routing_pb2

log = get_logger(__name__)


class DeploymentError(RuntimeError):
    """A deployment process failed to start, was refused, or the run did not finish."""


class LocalDeployment:
    """A SuperLink and one site daemon per site on loopback, with TLS, SuperNode authentication and
    routing tokens."""

    def __init__(self, work_dir: str | Path, sites: Sequence[tuple[str, Path]], model_spec: str,
                 startup_timeout: float = 180.0, rounds: bool = True, augment: AugmentConfig | None = None,
                 mode: str = "poly"):
        self.work = Path(work_dir).absolute()
        self.sites = [(name, Path(path).absolute()) for name, path in sites]
        self.model_spec = model_spec
        self.augment = augment or AugmentConfig()  # how each site's daemon writes its passages' encoding data
        self.mode = mode  # what the daemons train and serve with (federation.mode)
        self.startup_timeout = startup_timeout
        self.rounds = rounds
        self.certs = self.work / "certs"
        self.logs = self.work / "logs"
        self.processes = Processes(self.logs, self.work)
        self.tls: TlsFiles | None = None
        self.token = ""
        self.daemons: dict[str, Started] = {}
        self.superlink: SuperLink | None = None

    # -- processes -------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], home: Path) -> Started:
        return self.processes.spawn(name, argv, flower_env(home))

    def remember_descendants(self) -> None:
        """Note every live descendant of the processes started here (SuperNodes, SuperExec, ServerApp, ClientApps)."""
        self.processes.remember_descendants()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the SuperLink (unless ``rounds=False``), register every site's key, start every daemon."""
        self.work.mkdir(parents=True, exist_ok=True)
        self.tls = (TlsFiles(self.certs / "ca.crt", self.certs / "server.pem", self.certs / "server.key")
                    if (self.certs / "server.pem").is_file() else write_tls(self.certs))
        tokens = self.certs / "routing-tokens"
        if not tokens.is_file():
            atomic_write_text(tokens, f"# the query API's token\n{secrets.token_urlsafe(32)}\n")
            tokens.chmod(0o600)
        self.token = read_tokens(tokens)[-1]
        if self.rounds:
            (self.work / "flwr" / "superlink.db").unlink(missing_ok=True)  # a new deployment starts a new SuperLink state
            self._start_superlink()
        self._start_daemons(self.sites, register=self.rounds)

    def _start_superlink(self) -> None:
        """The SuperLink, its state (registered SuperNodes, runs) in a database file so that it survives a restart."""
        if self.superlink is None:
            self.superlink = SuperLink(self.work / "flwr", self.tls, self._spawn, startup_timeout=self.startup_timeout)
        try:
            self.superlink.start()
        except SuperLinkError as exc:
            raise DeploymentError(str(exc)) from None

    def restart_superlink(self) -> None:
        """Stop the coordinator's SuperLink (by its PID) and start it again on the same port and state,
        as an operator's restart would; the sites' daemons reconnect their SuperNodes on their own."""
        if self.superlink is None:
            raise DeploymentError("this deployment runs no SuperLink (rounds=False)")
        self.remember_descendants()
        started = self.superlink.started
        code = stop(started.process)
        self.processes.forget(started)
        log.info("deployment.superlink.restart", pid=started.process.pid, code=code)
        self._start_superlink()

    def node_keys(self, name: str) -> NodeKeys:
        """The site's authentication key pair, created on first use."""
        keys = NodeKeys(self.certs / "nodes" / name, self.certs / "nodes" / f"{name}.pub")
        return keys if keys.private_key.is_file() else write_node_keys(self.certs, name)

    def register(self, keys: NodeKeys) -> int:
        """Register a SuperNode's public key with the SuperLink; returns the node id it will have."""
        try:
            return self.superlink.control.register(keys.public_key)
        except SuperLinkError as exc:
            raise DeploymentError(str(exc)) from None

    def superlink_address(self) -> str:
        """The address the sites' SuperNodes dial: the SuperLink on loopback."""
        return self.superlink.address

    def site_config(self, name: str, site_dir: Path, keys: NodeKeys) -> Path:
        """Write the site's daemon configuration (``<work_dir>/sites-config/<name>.toml``); returns its path."""
        routing = self.certs / "routing" / f"{name}.pem"
        tls = (TlsFiles(self.tls.ca_cert, routing, routing.with_suffix(".key")) if routing.is_file()
               else write_routing_cert(self.certs, name))
        site = SiteSection(data_dir=str(site_dir), site_id="", routing_address="127.0.0.1:0",
                           superlink=self.superlink_address() if self.rounds else "", ca_cert=str(self.tls.ca_cert),
                           auth_key=str(keys.private_key), routing_cert=str(tls.server_cert),
                           routing_key=str(tls.server_key), tokens_file=str(self.certs / "routing-tokens"))
        path = self.work / "sites-config" / f"{name}.toml"
        defaults = FedpragConfig()
        atomic_write_text(path, config_to_toml(FedpragConfig(model=replace(defaults.model, path=self.model_spec),
                                                              site=site, augment=self.augment,
                                                              federation=replace(defaults.federation, mode=self.mode))))
        return path

    def _start_daemons(self, sites: Sequence[tuple[str, Path]], register: bool = False) -> None:
        """Start these sites' daemons together and wait for all (each loads its model while the next
        site's key is registered and its daemon spawned)."""
        starting = []
        for name, path in sites:
            keys = self.node_keys(name)
            if register:
                self.register(keys)
            starting.append((name, path, self._spawn_daemon(name, path, keys)))
        for name, path, started in starting:
            self._await_daemon(name, path, started)
        self.remember_descendants()

    def revive(self) -> list[str]:
        """Start again every site daemon that has exited, as a supervisor would; returns their names."""
        exited = [(name, path) for name, path in self.sites
                  if name not in self.daemons or self.daemons[name].process.poll() is not None]
        reaped = [self.daemons[name] for name, _ in exited if name in self.daemons]
        for started in reaped:
            self.processes.forget(started)
        self._start_daemons(exited)
        return [name for name, _ in exited]

    def start_daemon(self, name: str, site_dir: Path, keys: NodeKeys) -> Started:
        """Start one site's daemon and wait until it serves (and, with rounds, its SuperNode is connected)."""
        return self._await_daemon(name, site_dir, self._spawn_daemon(name, site_dir, keys))

    def _spawn_daemon(self, name: str, site_dir: Path, keys: NodeKeys) -> Started:
        return self._spawn(f"daemon-{name}", [bin_path("fedprag"), "--quiet", "client", "run", "--config",
                                              str(self.site_config(name, site_dir, keys))], self.work / "flwr" / name)

    def _await_daemon(self, name: str, site_dir: Path, started: Started) -> Started:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if started.process.poll() is not None:
                raise DeploymentError(f"the daemon of {name} exited with code {started.process.returncode}:\n"
                                      f"{started.tail()}")
            status = self._status(site_dir, started)
            if status is not None and (status.supernode_connected if self.rounds else status.serving):
                self.daemons[name] = started
                return started
            if status is not None and "supernode exited" in status.last_error:
                raise DeploymentError(f"the SuperNode of {name} was refused or failed: {status.last_error}; "
                                      f"see {site_dir / 'logs' / 'supernode.log'}")
            time.sleep(0.3)
        raise DeploymentError(f"the daemon of {name} did not {'connect' if self.rounds else 'serve'} "
                              f"within {self.startup_timeout:.0f} s; see {started.log}")

    @staticmethod
    def _status(site_dir: Path, started: Started) -> routing_pb2.SiteStatus | None:
        """The daemon's status once it wrote ``daemon.json`` and answers; else ``None``."""
        try:
            if json.loads((site_dir / DAEMON_FILE).read_text())["pid"] != started.process.pid:
                return None
            return daemon_status(site_dir, timeout=2.0)
        except (OSError, ValueError, KeyError, grpc.RpcError):
            return None

    def routing_sites(self, deadline: float = 5.0) -> list[RemoteSite]:
        """The query API's connections to every daemon's routing service (TLS, token, deadline)."""
        sites = []
        for name, path in self.sites:
            port = json.loads((path / DAEMON_FILE).read_text())["routing_port"]
            sites.append(RemoteSite(name, f"127.0.0.1:{port}", self.tls.ca_cert, self.token, deadline))
        return sites

    def serve_settings(self) -> dict[str, object]:
        """The ``[serve]`` fields that point a query API at these daemons (sites, CA, token file)."""
        sites = []
        for site in self.routing_sites():
            sites.append(f"{site.name}={site.address}")
            site.close()
        return {"sites": tuple(sites), "ca_cert": str(self.tls.ca_cert),
                "site_token_file": str(self.certs / "routing-tokens")}

    def run(self, config: FedpragConfig, out: TextIO | None = None) -> list[RoundReport]:
        """Run the federation's remaining rounds through ``flwr run``; returns every recorded round.

        The ServerApp's and ClientApps' log lines are passed through to ``out`` (default: standard
        error) as they come.
        """
        config = replace(config, federation=replace(config.federation, work_dir=str(self.work)))
        config_path = self.work / "fedprag.toml"
        atomic_write_text(config_path, config_to_toml(config))

        def passed_on(line: str) -> None:
            (out or sys.stderr).write(line)
            self.remember_descendants()

        try:
            released = self.superlink.control.campaign({"config": str(config_path)}, passed_on)
        except SuperLinkError as exc:
            raise DeploymentError(str(exc)) from None
        rounds = recorded_rounds(registry_dir(config.federation))
        done = max((r.round for r in rounds if r.version is not None), default=0)
        if not released or done < config.federation.rounds:
            raise DeploymentError(f"the federation stopped after round {done} of {config.federation.rounds} "
                                  f"(released: {released}); see {self.logs / 'superlink.log'}")
        return rounds

    def stop(self) -> None:
        """Stop every process this deployment started, side by side, then their descendants."""
        self.processes.stop()
        self.daemons.clear()

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def federate(config: FedpragConfig, site_dirs: Sequence[Path]) -> list[RoundReport]:
    """Run the federation's remaining rounds over these site stores with the configured runtime.

    ``deployment`` (the default) starts a SuperLink and one SuperNode per site as processes;
    ``simulation`` runs the sites as Ray actors (stores must be ``<work_dir>/sites/site-<i>``).
    """
    if config.federation.runtime == "simulation":
        return simulate(config, len(site_dirs))
    with LocalDeployment(config.federation.work_dir, [(p.name, p) for p in site_dirs], config.model.path,
                         augment=config.augment, mode=config.federation.mode) as deployment:
        return deployment.run(config)
