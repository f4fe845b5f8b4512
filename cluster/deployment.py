"""A real Flower deployment on one machine: the coordinator and every site as separate processes.

:class:`LocalDeployment` is what ``fedprag federate`` and ``fedprag demo`` run by default:

1. TLS material and one authentication key pair per site (:mod:`fedprag.cluster.certs`), kept under
   ``<work_dir>/certs`` and reused on the next start;
2. ``flower-superlink`` with TLS and SuperNode authentication on a free loopback port;
3. each site's public key registered with ``flwr supernode register`` — a SuperNode whose key
   is not registered is refused;
4. one ``flower-supernode`` per site, serving that site's data directory;
5. ``flwr run`` of the fedprag Flower app: its ServerApp is :data:`fedprag.coordinator.app.server_app`,
   its ClientApp :data:`fedprag.client.app.client_app`, and its only run setting is the path of the
   fedprag TOML file the coordinator reads.

Each process runs in its own session, logs to ``<work_dir>/logs/<name>.log`` (``pids.json``
lists them) and is stopped through its process group by PID. Flower's SuperExec and the apps it
launches run in sessions of their own, so the deployment also keeps track of every descendant of
its processes while they run, and stops those too, even after their parent died. A SuperNode's
log holds that site's own ClientApp logs, so it stays with the site.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Self

import psutil

from fedprag.cluster.certs import NodeKeys, TlsFiles, write_node_keys, write_tls
from fedprag.cluster.simulation import FLOWER_QUIET, simulate
from fedprag.coordinator.app import RoundReport, recorded_rounds, registry_dir
from fedprag.shared.config import FedpragConfig, config_to_toml
from fedprag.shared.io import atomic_write_text
from fedprag.shared.log import get_logger

log = get_logger(__name__)

# The Flower app project ``flwr run`` bundles: components from the installed fedprag packages.
FLOWER_APP = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "fedprag-federation"
version = "0.1.0"
description = "fedprag federated rounds: Poly-PRAG expert pool, aggregated by routing mass"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "fedprag"

[tool.flwr.app.components]
serverapp = "fedprag.coordinator.app:server_app"
clientapp = "fedprag.client.app:client_app"

[tool.flwr.app.config]
config = ""
"""
CONNECTED = "SuperNode ID:"


class DeploymentError(RuntimeError):
    """A deployment process failed to start, was refused, or the run did not finish."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _quoted(value: str) -> str:
    if "'" in value or '"' in value:
        raise DeploymentError(f"path {value!r}: quotes are not allowed in paths passed to Flower")
    return f"'{value}'"


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


@dataclass
class Started:
    """One process this deployment started."""

    name: str
    process: subprocess.Popen
    log: Path


class LocalDeployment:
    """A SuperLink and one SuperNode per site on loopback, with TLS and SuperNode authentication."""

    def __init__(self, work_dir: str | Path, sites: Sequence[tuple[str, Path]], model_spec: str,
                 startup_timeout: float = 120.0):
        self.work = Path(work_dir).absolute()
        self.sites = [(name, Path(path).absolute()) for name, path in sites]
        self.model_spec = model_spec
        self.startup_timeout = startup_timeout
        self.certs = self.work / "certs"
        self.logs = self.work / "logs"
        self.port = 0
        self.processes: list[Started] = []
        self.descendants: dict[int, psutil.Process] = {}
        self.tls: TlsFiles | None = None

    # -- processes -------------------------------------------------------------------------
    def _env(self, home: Path) -> dict[str, str]:
        home.mkdir(parents=True, exist_ok=True)
        bin_dir = str(Path(sys.executable).parent)
        return {**os.environ, **FLOWER_QUIET, "FLWR_HOME": str(home),
                "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}

    def _spawn(self, name: str, argv: list[str], home: Path) -> Started:
        self.logs.mkdir(parents=True, exist_ok=True)
        path = self.logs / f"{name}.log"
        with open(path, "ab") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=self._env(home),
                                       cwd=self.work, start_new_session=True)
        started = Started(name, process, path)
        self.processes.append(started)
        self._write_pids()
        log.info("deployment.process.start", name=name, pid=process.pid)
        return started

    def _write_pids(self) -> None:
        pids = {p.name: p.process.pid for p in self.processes}
        atomic_write_text(self.logs / "pids.json",
                          json.dumps({**pids, "descendants": sorted(self.descendants)}, indent=2))

    def remember_descendants(self) -> None:
        """Note every live descendant of the processes started here (SuperExec, ServerApp, ClientApps)."""
        known = len(self.descendants)
        for started in self.processes:
            try:
                children = psutil.Process(started.process.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                continue
            for child in children:
                self.descendants.setdefault(child.pid, child)
        if len(self.descendants) > known:
            self._write_pids()

    def _tail(self, started: Started, lines: int = 8) -> str:
        text = started.log.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def _bin(self, name: str) -> str:
        return str(Path(sys.executable).parent / name)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the SuperLink, register every site's key, and start and connect every SuperNode."""
        self.work.mkdir(parents=True, exist_ok=True)
        self.tls = (TlsFiles(self.certs / "ca.crt", self.certs / "server.pem", self.certs / "server.key")
                    if (self.certs / "server.pem").is_file() else write_tls(self.certs))
        self.port = free_port()
        superlink = self._spawn("superlink", [
            self._bin("flower-superlink"), "--ssl-ca-certfile", str(self.tls.ca_cert),
            "--ssl-certfile", str(self.tls.server_cert), "--ssl-keyfile", str(self.tls.server_key),
            "--enable-supernode-auth", "--host", "127.0.0.1", "--port", str(self.port),
            "--disable-runtime-dependency-installation",
        ], self.work / "flwr" / "superlink")
        self._wait_listening(superlink)
        atomic_write_text(self.work / "flwr" / "cli" / "config.toml",
                          "[superlink]\ndefault = \"local\"\n\n[superlink.local]\n"
                          f"address = \"127.0.0.1:{self.port}\"\nroot-certificates = \"{self.tls.ca_cert}\"\n")
        for name, path in self.sites:
            keys = self.node_keys(name)
            self.register(keys)
            self.start_supernode(name, path, keys)
        self.remember_descendants()

    def _wait_listening(self, started: Started) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if started.process.poll() is not None:
                raise DeploymentError(f"{started.name} exited with code {started.process.returncode}:\n{self._tail(started)}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.2)
        raise DeploymentError(f"{started.name} did not listen on port {self.port} within {self.startup_timeout:.0f} s")

    def node_keys(self, name: str) -> NodeKeys:
        """The site's authentication key pair, created on first use."""
        keys = NodeKeys(self.certs / "nodes" / name, self.certs / "nodes" / f"{name}.pub")
        return keys if keys.private_key.is_file() else write_node_keys(self.certs, name)

    def register(self, keys: NodeKeys) -> int:
        """Register a SuperNode's public key with the SuperLink; returns the node id it will have."""
        result = subprocess.run(
            [self._bin("flwr"), "supernode", "register", str(keys.public_key), "local", "--format", "json"],
            capture_output=True, text=True, env=self._env(self.work / "flwr" / "cli"), timeout=120, check=False)
        try:
            reply = json.loads(result.stdout)
        except json.JSONDecodeError:
            reply = {}
        if result.returncode != 0 or not reply.get("success"):
            raise DeploymentError(f"registering {keys.public_key.name} failed: {(result.stdout + result.stderr)[-500:]}")
        return int(reply["node-id"])

    def start_supernode(self, name: str, site_dir: Path, keys: NodeKeys) -> Started:
        """Start the SuperNode of one site and wait until the SuperLink accepted it."""
        node_config = f"site-dir={_quoted(str(site_dir))} model={_quoted(self.model_spec)}"
        started = self._spawn(f"supernode-{name}", [
            self._bin("flower-supernode"), "--root-certificates", str(self.tls.ca_cert),
            "--superlink", f"127.0.0.1:{self.port}", "--auth-supernode-private-key", str(keys.private_key),
            "--node-config", node_config, "--host", "127.0.0.1", "--port", str(free_port()),
            "--max-retries", "3",
        ], self.work / "flwr" / name)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if CONNECTED in started.log.read_text(encoding="utf-8", errors="replace"):
                return started
            if started.process.poll() is not None:
                raise DeploymentError(f"SuperNode {name} was refused or failed (exit code "
                                      f"{started.process.returncode}):\n{self._tail(started)}")
            time.sleep(0.2)
        raise DeploymentError(f"SuperNode {name} did not connect within {self.startup_timeout:.0f} s")

    def run(self, config: FedpragConfig) -> list[RoundReport]:
        """Run the federation's remaining rounds through ``flwr run``; returns every recorded round.

        The ServerApp's and ClientApps' log lines are passed through to standard error as they come.
        """
        config = replace(config, federation=replace(config.federation, work_dir=str(self.work)))
        config_path = self.work / "fedprag.toml"
        atomic_write_text(config_path, config_to_toml(config))
        app_dir = self.work / "flower-app"
        atomic_write_text(app_dir / "pyproject.toml", FLOWER_APP)
        argv = [self._bin("flwr"), "run", str(app_dir), "local", "--stream",
                "--run-config", f"config={_quoted(str(config_path))}"]
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=self._env(self.work / "flwr" / "cli"), cwd=self.work) as runner:
            for line in runner.stdout:
                sys.stderr.write(line)
                self.remember_descendants()
        rounds = recorded_rounds(registry_dir(config.federation))
        done = max((r.round for r in rounds if r.version is not None), default=0)
        if runner.returncode != 0 or done < config.federation.rounds:
            raise DeploymentError(f"the federation stopped after round {done} of {config.federation.rounds} "
                                  f"(flwr run exit code {runner.returncode}); see {self.logs / 'superlink.log'}")
        return rounds

    def stop(self) -> None:
        """Stop every process this deployment started, newest first, then their descendants."""
        self.remember_descendants()
        for started in reversed(self.processes):
            _signal_group(started.process.pid, signal.SIGTERM)
            try:
                started.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                started.process.kill()
                started.process.wait()
            _signal_group(started.process.pid, signal.SIGKILL)  # anything the process left behind
            log.info("deployment.process.stop", name=started.name, pid=started.process.pid,
                     code=started.process.returncode)
        left = list(self.descendants.values())
        for child in left:  # psutil checks each is still the process we saw (pid and start time)
            with contextlib.suppress(psutil.NoSuchProcess):
                child.terminate()
        _, alive = psutil.wait_procs(left, timeout=10)
        for child in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        psutil.wait_procs(alive, timeout=10)
        self.processes.clear()
        self.descendants.clear()

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
        return simulate(config.model.path, config.poly, config.federation, len(site_dirs))
    with LocalDeployment(config.federation.work_dir, [(p.name, p) for p in site_dirs], config.model.path) as deployment:
        return deployment.run(config)
