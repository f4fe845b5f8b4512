"""The site's Flower SuperNode, kept running by the daemon.

The SuperNode dials the coordinator's SuperLink (TLS, node authentication) and starts the site's
ClientApp for each message; the ClientApp hands the work to the daemon over its local socket
(:mod:`fedprag.client.admin`). The supervisor starts the SuperNode, starts it again if it exits,
and stops one that a killed daemon left running.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import psutil

from fedprag.client.admin import admin_address
from fedprag.shared.config import SiteSection
from fedprag.shared.log import get_logger
from fedprag.shared.processes import bin_path, flower_env, free_port, signal_group, spawn, stop

log = get_logger(__name__)

CONNECTED = "SuperNode ID:"
"""What the SuperNode logs once the SuperLink accepted it."""


class SupernodeSupervisor:
    """Keeps one site's SuperNode running while the daemon runs (nothing, if no SuperLink is configured)."""

    def __init__(self, site: SiteSection, root: Path):
        self.site, self.root = site, root
        self.log = root / "logs" / "supernode.log"
        self.process: subprocess.Popen | None = None

    def record(self) -> dict[str, float | int | None]:
        """What the daemon's record keeps, so that a restarted daemon can stop a SuperNode its killed
        predecessor left: the pid and start time."""
        pid = self.process.pid if self.process is not None else None
        return {"supernode": pid, "supernode_started": psutil.Process(pid).create_time() if pid is not None else None}

    @staticmethod
    def stop_orphan(record: dict) -> None:
        """Stop the SuperNode of a killed daemon's ``record`` if it still runs (checked by start time)."""
        try:
            orphan = psutil.Process(record["supernode"])
            if abs(orphan.create_time() - record["supernode_started"]) < 1e-3:
                log.warning("daemon.supernode.orphan", pid=orphan.pid)
                signal_group(orphan.pid, signal.SIGKILL)
        except (OSError, ValueError, KeyError, TypeError, psutil.Error):
            return

    def check(self) -> str:
        """Start the SuperNode, or start it again if it exited; returns why it was restarted ('' if not)."""
        if not self.site.superlink:
            return ""
        restarted = ""
        if self.process is not None and self.process.poll() is not None:
            restarted = f"supernode exited with code {self.process.returncode}; restarted"
            log.warning("daemon.supernode.exited", code=self.process.returncode)
            self.process = None
        if self.process is None:
            self._start()
        return restarted

    def _start(self) -> None:
        node_config = f"site-dir='{self.root.resolve()}' daemon='{admin_address(self.root)}'"
        argv = [bin_path("flower-supernode"), "--root-certificates", self.site.ca_cert, "--superlink",
                self.site.superlink, "--auth-supernode-private-key", self.site.auth_key, "--node-config", node_config,
                "--host", "127.0.0.1", "--port", str(free_port())]
        self.process = spawn(argv, self.log, flower_env(self.root / "flwr"), cwd=self.root)
        log.info("daemon.supernode.start", pid=self.process.pid, superlink=self.site.superlink)

    def connected(self) -> bool:
        """Whether the SuperNode runs and the SuperLink accepted it."""
        if self.process is None or self.process.poll() is not None or not self.log.is_file():
            return False
        return CONNECTED in self.log.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
