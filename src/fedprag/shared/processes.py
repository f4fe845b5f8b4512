"""Starting and stopping the processes fedprag runs (Flower's SuperLink and SuperNodes, site daemons).

Each process runs in a session of its own, appends its output to one log file, and is stopped
through its process group by PID, never by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

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
