"""The site's Flower ClientApp: train in rounds, and keep the pool the coordinator releases.

``train`` carries a :class:`~fedprag.shared.wire.RoundTask` (a
:class:`~fedprag.shared.wire.GeneratorTask` in distilled mode) and is answered with a
:class:`~fedprag.shared.wire.SiteUpdate` (a :class:`~fedprag.shared.wire.GeneratorUpdate`);
``query.release`` carries a :class:`~fedprag.shared.wire.PoolRelease` (a
:class:`~fedprag.shared.wire.GeneratorRelease`) and is answered with a
:class:`~fedprag.shared.wire.ReleaseAck` (:meth:`fedprag.client.modes.SiteMode.work` does all four).

Where the work runs comes from the node config:

* ``daemon='unix:///…/daemon.sock'`` (a SuperNode started by ``fedprag client run``): the message
  goes to the site daemon's local ``SiteAdmin.Work``, which holds the base model warm. This
  process, which the SuperNode starts afresh for every message, then imports neither torch nor
  the model.
* otherwise it runs here: ``site-dir`` names the data directory (a SuperNode started by hand), or
  ``partition-id`` a store under the federation's ``sites`` folder (a simulated node). The base
  model is the node config's ``model`` (default ``tiny``).

Every reply is also appended, byte for byte, to the site's egress log, so an owner can audit what left.
"""

from __future__ import annotations

from pathlib import Path

import grpc
from flwr.app import Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp

from fedprag.client.admin import ADMIN_OPTIONS
from fedprag.shared.log import configure as configure_logging
from fedprag.shared.log import get_logger
from fedprag.shared.models.augment_config import AugmentConfig
from fedprag.shared.proto import routing_pb2_grpc
from fedprag.shared.wire import (
    RELEASES,
    TASKS,
    GeneratorRelease,
    GeneratorTask,
    GeneratorUpdate,
    PoolRelease,
    ReleaseAck,
    RoundTask,
    SiteUpdate,
    WireMessage,
    decode,
    record_blobs,
)

log = get_logger(__name__)

WORK_DEADLINE = 3600.0  # seconds a round may take at the site
REQUESTS: dict[str, tuple[type[WireMessage], ...]] = {MessageType.TRAIN: TASKS, f"{MessageType.QUERY}.release": RELEASES}
"""What each message type may carry: a round's task or a release, of either mode."""
REPLIES: dict[str, type[WireMessage]] = {RoundTask.KIND: SiteUpdate, PoolRelease.KIND: ReleaseAck,
                                         GeneratorTask.KIND: GeneratorUpdate, GeneratorRelease.KIND: ReleaseAck}


class SiteFailure(RuntimeError):
    """A site could not do its work; carries only the kind of failure, never its text."""


def site_dir(context: Context, sites_root: str | None) -> Path:
    """The data directory this node serves."""
    config = context.node_config
    if "site-dir" in config:
        return Path(str(config["site-dir"]))
    if sites_root is None or "partition-id" not in config:
        raise KeyError("node config: a deployed SuperNode needs site-dir='<the site's data directory>'")
    return Path(sites_root) / f"site-{int(config['partition-id'])}"


def audit(root: Path, site: str, record: RecordDict) -> None:
    """Append the exact serialised bytes of an outgoing message to the site's egress log.

    ``<data_dir>/egress/<site>.bin`` lets a data owner inspect everything that left the site.
    """
    folder = root / "egress"
    folder.mkdir(exist_ok=True)
    with open(folder / f"{site}.bin", "ab") as out:
        out.writelines(record_blobs(record))


def forward(address: str, request: WireMessage) -> WireMessage:
    """Hand ``request`` to the site daemon on its local socket; returns its reply."""
    with grpc.insecure_channel(address, options=ADMIN_OPTIONS) as channel:  # a Unix socket, on site
        try:
            reply = routing_pb2_grpc.SiteAdminStub(channel).Work(request.to_proto(), timeout=WORK_DEADLINE)
        except grpc.RpcError as exc:  # the daemon's details name the failure's kind only
            kind = exc.details() if exc.code() == grpc.StatusCode.INTERNAL else exc.code().name
            raise SiteFailure(kind) from None
    return REPLIES[request.KIND].from_proto(reply)


def make_client_app(model_spec: str | None = None, sites_root: str | None = None, threads: int = 1,
                    augment: AugmentConfig | None = None) -> ClientApp:
    """A ClientApp bound to a base model (else the node config's ``model``) and, for simulation,
    the folder of site stores and how sites write their passages' encoding data."""
    app = ClientApp()

    def handle(msg: Message, context: Context) -> Message:
        configure_logging()  # a deployed ClientApp logs to its SuperNode's log, on site
        config = context.node_config
        root = site_dir(context, sites_root)
        try:
            request = decode(msg.content, REQUESTS[msg.metadata.message_type])
            if "daemon" in config:
                reply = forward(str(config["daemon"]), request)
            else:
                # Only here, in-process, does this ClientApp need torch and the model.
                from fedprag.client.modes import run_locally
                reply = run_locally(root, model_spec or str(config.get("model", "tiny")), request, threads, augment)
        except SiteFailure:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is reported, by kind only
            # The reason stays on site; only the failure's kind crosses the boundary (an exception
            # message could quote a passage).
            log.error("client.message.failed", kind=type(exc).__name__, site=str(root),
                      message_type=msg.metadata.message_type)
            raise SiteFailure(type(exc).__name__) from None
        record = reply.to_record()
        audit(root, reply.site, record)
        return Message(record, reply_to=msg)

    app.train()(handle)
    app.query("release")(handle)
    return app


client_app = make_client_app()
