"""The site daemon's local socket (``SiteAdmin``): status for ``fedprag client status``, and the
round and release work its ClientApp hands over.

It listens on a Unix socket in a folder only this user can open, so only processes of the site's
own account reach it; the routing service (:mod:`fedprag.client.routing_service`) is the daemon's
only port open to the network.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent import futures
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import grpc
import psutil

from fedprag.shared.log import get_logger
from fedprag.shared.proto import routing_pb2, routing_pb2_grpc
from fedprag.shared.wire import RELEASES, TASKS, WireError, WireMessage

if TYPE_CHECKING:  # the ClientApp's process, which reaches the daemon through here, imports no torch
    from fedprag.client.modes import SiteMode

log = get_logger(__name__)

DAEMON_FILE = "daemon.json"  # in the data directory while the daemon runs: pid, ports, socket, SuperNode


def daemon_record(data_dir: str | Path) -> dict:
    """What ``daemon.json`` holds (empty if there is none): the daemon's pid, ports and SuperNode."""
    try:
        return json.loads((Path(data_dir) / DAEMON_FILE).read_text())
    except (OSError, ValueError):
        return {}


def running_daemon(data_dir: str | Path) -> dict | None:
    """The record of the daemon serving ``data_dir``, if one is alive."""
    record = daemon_record(data_dir)
    try:
        alive = psutil.pid_exists(record["pid"]) and psutil.Process(record["pid"]).status() != psutil.STATUS_ZOMBIE
    except (KeyError, TypeError, psutil.Error):
        return None
    return record if alive else None


ADMIN_OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
"""The local socket carries whole pools (a round task, a site update): no message size limit."""


def admin_address(data_dir: str | Path) -> str:
    """The daemon's local socket: ``unix:`` in a folder only this user can open (short enough for any data dir)."""
    folder = Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp") / f"fedprag-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    folder.chmod(0o700)
    name = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:16]
    return f"unix://{folder / name}.sock"


def daemon_status(data_dir: str | Path, timeout: float = 5.0) -> routing_pb2.SiteStatus:
    """Ask the running daemon of ``data_dir`` for its status (``grpc.RpcError`` if it does not answer)."""
    with grpc.insecure_channel(admin_address(data_dir)) as channel:
        return routing_pb2_grpc.SiteAdminStub(channel).Status(routing_pb2.StatusRequest(), timeout=timeout)


def status_fields(status: routing_pb2.SiteStatus) -> dict[str, object]:
    """A status as plain Python values, field by field (repeated fields as lists)."""
    return {f.name: (list(getattr(status, f.name)) if f.is_repeated else getattr(status, f.name))
            for f in status.DESCRIPTOR.fields}


class Site(Protocol):
    """What the local socket asks of the daemon."""

    mode: SiteMode

    def status(self) -> routing_pb2.SiteStatus: ...

    def work(self, request: WireMessage) -> WireMessage: ...


class _Admin(routing_pb2_grpc.SiteAdminServicer):
    def __init__(self, site: Site):
        self.site = site

    def Status(self, request: routing_pb2.StatusRequest, context: grpc.ServicerContext) -> routing_pb2.SiteStatus:
        return self.site.status()

    def Work(self, request: routing_pb2.WireRecord, context: grpc.ServicerContext) -> routing_pb2.WireRecord:
        mode = self.site.mode
        kinds: dict[str, type[WireMessage]] = {k.KIND: k for k in (mode.task, mode.release)}
        if request.kind in {k.KIND for k in (*TASKS, *RELEASES)} - set(kinds):  # the other mode's are refused
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"this site runs federation.mode = '{mode.name}'; it does no '{request.kind}' work")
        if request.kind not in kinds:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"a site does no work for '{request.kind}' messages")
        try:
            message = kinds[request.kind].from_proto(request)
        except WireError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            return self.site.work(message).to_proto()
        except Exception as exc:  # noqa: BLE001 - the reply names the failure's kind only (its text could quote a passage)
            log.error("daemon.work.failed", kind=type(exc).__name__, message=request.kind)
            context.abort(grpc.StatusCode.INTERNAL, type(exc).__name__)


def serve_admin(site: Site, data_dir: str | Path) -> grpc.Server:
    """Start the local socket of the daemon serving ``data_dir`` (a socket a killed daemon left is replaced)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=ADMIN_OPTIONS)
    routing_pb2_grpc.add_SiteAdminServicer_to_server(_Admin(site), server)
    address = admin_address(data_dir)
    Path(address.removeprefix("unix://")).unlink(missing_ok=True)
    server.add_insecure_port(address)
    server.start()
    return server
