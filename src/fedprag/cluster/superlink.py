"""The coordinator's Flower SuperLink, and an operator's hold on it.

* :class:`SuperLink` is the ``flower-superlink`` process: TLS, SuperNode authentication, its state
  (registered SuperNodes, runs) in a database file, so that a restart keeps both.
* :class:`Control` is what an operator does through the SuperLink's Control API with Flower's
  ``flwr`` command: admit a site's public key, remove it, and run a campaign (``flwr run`` of
  fedprag's Flower app: the rounds still to do, then the release).

:class:`~fedprag.cluster.deployment.LocalDeployment` (one machine) and
:class:`~fedprag.cluster.coordinator.Coordinator` (``fedprag coordinator run``) both run a
:class:`SuperLink`; ``fedprag federate --coordinator`` is a :class:`Control` alone.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from fedprag.cluster.certs import TlsFiles
from fedprag.shared.io import atomic_write_text
from fedprag.shared.processes import Started, bin_path, flower_env, free_port

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
rounds = 0
more_rounds = 0
"""


RELEASED = '"event": "coordinator.release.done"'
"""The ServerApp's log line that ends a campaign that did all it was asked (fedprag.coordinator.app.release)."""


class SuperLinkError(RuntimeError):
    """The SuperLink failed to start, or refused what an operator asked of it."""


Launch = Callable[[str, list[str], Path], Started]
"""Starts a process: its name, its command line and its Flower home; the caller keeps track of it."""


def _quoted(value: str) -> str:
    if "'" in value or '"' in value:
        raise SuperLinkError(f"path {value!r}: quotes are not allowed in paths passed to Flower")
    return f"'{value}'"


class Control:
    """A SuperLink's Control API through ``flwr``, with the CA that verifies it; ``home`` holds
    ``flwr``'s own configuration."""

    def __init__(self, address: str, ca_cert: str | Path, home: Path):
        self.address, self.home = address, home
        atomic_write_text(home / "config.toml", "[superlink]\ndefault = \"fedprag\"\n\n[superlink.fedprag]\n"
                                                f"address = \"{address}\"\nroot-certificates = \"{Path(ca_cert).absolute()}\"\n")

    def _flwr(self, *args: str) -> dict:
        try:
            result = subprocess.run([bin_path("flwr"), *args, "fedprag", "--format", "json"], capture_output=True,
                                    text=True, env=flower_env(self.home), timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SuperLinkError(f"flwr {' '.join(args[:2])} at {self.address}: {exc}") from None
        try:
            reply = json.loads(result.stdout)
        except json.JSONDecodeError:
            reply = {}
        if result.returncode != 0 or not reply.get("success"):
            raise SuperLinkError(f"flwr {' '.join(args[:2])} at {self.address} failed: "
                                 f"{(result.stdout + result.stderr)[-500:]}")
        return reply

    def register(self, public_key: Path) -> int:
        """Admit the SuperNode whose public key this is; returns the node id it will have."""
        return int(self._flwr("supernode", "register", str(public_key))["node-id"])

    def unregister(self, node_id: int) -> None:
        """Refuse the SuperNode ``node_id`` from now on."""
        self._flwr("supernode", "unregister", str(node_id))

    def campaign(self, run_config: Mapping[str, str | int], on_line: Callable[[str], None]) -> bool:
        """Run fedprag's Flower app on the SuperLink (``flwr run``), each line of its output (the
        ServerApp's log) to ``on_line`` as it comes; returns whether the campaign ended with its
        release. (``flwr run --stream`` exits 0 once the log ends, however the run ended, so the
        ServerApp's own last word decides.)"""
        app_dir = self.home / "flower-app"
        atomic_write_text(app_dir / "pyproject.toml", FLOWER_APP)
        pairs = " ".join(f"{key}={_quoted(value) if isinstance(value, str) else value}"
                         for key, value in run_config.items())
        argv = [bin_path("flwr"), "run", str(app_dir), "fedprag", "--stream", *(["--run-config", pairs] if pairs else [])]
        released = False
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=flower_env(self.home), cwd=self.home) as runner:
            for line in runner.stdout:
                on_line(line)
                released = released or RELEASED in line
        return runner.returncode == 0 and released


class SuperLink:
    """A ``flower-superlink`` with TLS and SuperNode authentication on ``host:port`` (0: a free
    port), its state under ``home``; started through ``launch``, which keeps track of the process."""

    def __init__(self, home: Path, tls: TlsFiles, launch: Launch, host: str = "127.0.0.1", port: int = 0,
                 startup_timeout: float = 180.0):
        self.home, self.tls, self.launch = home, tls, launch
        self.host, self.port, self.startup_timeout = host, port, startup_timeout
        self.started: Started | None = None
        self.control: Control | None = None

    @property
    def address(self) -> str:
        """Where this machine dials it (loopback when it listens on every interface)."""
        return f"{'127.0.0.1' if self.host in ('0.0.0.0', '::') else self.host}:{self.port}"

    def start(self) -> Started:
        """Start the process and wait until it listens; then :attr:`control` reaches it."""
        self.port = self.port or free_port()
        self.started = self.launch("superlink", [
            bin_path("flower-superlink"), "--ssl-ca-certfile", str(self.tls.ca_cert),
            "--ssl-certfile", str(self.tls.server_cert), "--ssl-keyfile", str(self.tls.server_key),
            "--enable-supernode-auth", "--host", self.host, "--port", str(self.port),
            "--database", str(self.home / "superlink.db"), "--disable-runtime-dependency-installation",
        ], self.home / "superlink")
        self._wait_listening()
        self.control = Control(self.address, self.tls.ca_cert, self.home / "cli")
        return self.started

    def _wait_listening(self) -> None:
        host, _, port = self.address.rpartition(":")
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.started.process.poll() is not None:
                raise SuperLinkError(f"the SuperLink exited with code {self.started.process.returncode}:\n"
                                     f"{self.started.tail()}")
            with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=1.0):
                return
            time.sleep(0.2)
        raise SuperLinkError(f"the SuperLink did not listen on {self.address} within {self.startup_timeout:.0f} s")
