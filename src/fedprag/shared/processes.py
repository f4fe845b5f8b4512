"""Starting and stopping the processes fedprag runs (Flower's SuperLink and SuperNodes, site daemons).

Each process runs in a session of its own, appends its output to one log file, and is stopped
through its process group by PID, never by name.
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from fedprag.shared.io import atomic_write_text
from fedprag.shared.log import get_logger

log = get_logger(__name__)

FLOWER_QUIET = {
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def bin_path(name: str) -> str:
    """An executable installed beside this interpreter (``flower-supernode``, ``fedprag``)."""
    return str(Path(sys.executable).parent / name)


def flower_env(home: Path) -> dict[str, str]:
    """This environment, plus a private Flower home, Flower's telemetry off, and this venv first on PATH."""
    home.mkdir(parents=True, exist_ok=True)
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, **FLOWER_QUIET, "FLWR_HOME": str(home),
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


def spawn(argv: list[str], log_path: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.Popen:
    """Start ``argv`` in its own session, its output appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to the process group led by ``pid`` (gone already is fine)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def stop(process: subprocess.Popen, timeout: float = 15.0) -> int:
    """SIGTERM the process's group, SIGKILL it after ``timeout`` s, then anything left in the group."""
    return stop_all([process], timeout)[0]


def stop_all(processes: Sequence[subprocess.Popen], timeout: float = 15.0) -> list[int]:
    """:func:`stop` for several processes at once: every group is signalled before any is waited
    for, so they shut down side by side; returns their exit codes."""
    for process in processes:
        signal_group(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        signal_group(process.pid, signal.SIGKILL)
    return [process.returncode for process in processes]


@dataclass
class Started:
    """One process started by :class:`Processes`: its name, the process, and the log its output goes to."""

    name: str
    process: subprocess.Popen
    log: Path

    def tail(self, lines: int = 8) -> str:
        """The last lines of its log."""
        return "\n".join(self.log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


class Processes:
    """The processes one owner started, and every descendant of theirs seen while they ran.

    Each logs to ``<logs>/<name>.log``, and ``<logs>/pids.json`` lists them all. Flower's
    SuperExec and the apps it launches run in sessions of their own, so stopping a process's group
    would miss them: :meth:`stop` stops those it saw too, even after their parent died.
    """

    def __init__(self, logs: Path, cwd: Path):
        self.logs, self.cwd = logs, cwd
        self.started: list[Started] = []
        self.descendants: dict[int, psutil.Process] = {}

    def spawn(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> Started:
        """Start ``argv`` in a session of its own, its output to ``<logs>/<name>.log``."""
        path = self.logs / f"{name}.log"
        started = Started(name, spawn(argv, path, dict(env) if env is not None else None, cwd=self.cwd), path)
        self.started.append(started)
        self._write_pids()
        log.info("process.start", name=name, pid=started.process.pid)
        return started

    def stop_leftovers(self) -> None:
        """Stop what an earlier owner of ``<logs>/pids.json`` started and left running (it was
        killed): each process still there and older than the file is stopped by PID."""
        try:
            listed = json.loads((self.logs / "pids.json").read_text())
            written = (self.logs / "pids.json").stat().st_mtime
        except (OSError, ValueError):
            return
        pids = [pid for name, pid in listed.items() if name != "descendants"] + listed.get("descendants", [])
        left = []
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(pid)
                if process.create_time() <= written:
                    left.append(process)
        _terminate(left)
        if left:
            log.warning("process.leftovers_stopped", pids=[p.pid for p in left])

    def forget(self, started: Started) -> None:
        """Stop tracking a process that has exited and was reaped: its pid is never signalled again."""
        self.started = [s for s in self.started if s is not started]

    def _write_pids(self) -> None:
        """List the processes running now (one that exited is left out, so that its pid, once used
        again, is never taken for it: see :meth:`stop_leftovers`)."""
        pids = {s.name: s.process.pid for s in self.started if s.process.poll() is None}
        live = sorted(pid for pid, process in self.descendants.items() if process.is_running())
        atomic_write_text(self.logs / "pids.json", json.dumps({**pids, "descendants": live}, indent=2))

    def remember_descendants(self) -> None:
        """Note every live descendant of the processes started here."""
        known = len(self.descendants)
        for started in self.started:
            try:
                children = psutil.Process(started.process.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                continue
            for child in children:
                self.descendants.setdefault(child.pid, child)
        if len(self.descendants) > known:
            self._write_pids()

    def stop(self) -> None:
        """Stop every process started here, side by side, then every descendant seen."""
        self.remember_descendants()
        for started, code in zip(self.started, stop_all([s.process for s in self.started])):
            log.info("process.stop", name=started.name, pid=started.process.pid, code=code)
        _terminate(list(self.descendants.values()))
        self.started.clear()
        self.descendants.clear()


def _terminate(processes: list[psutil.Process], timeout: float = 10.0) -> None:
    """SIGTERM each, SIGKILL what is left after ``timeout`` s. psutil checks that each is still the
    process it saw (pid and start time), so a pid used again by another process is left alone."""
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=timeout)
