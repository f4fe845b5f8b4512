"""The data owner's daemon, ``fedprag client run``: one long-running process per site.

It holds the base model, the retrieval encoder and the site store warm, and:

* **joins rounds.** It keeps a Flower SuperNode running (TLS, node authentication) and restarts it
  if it exits; the SuperNode reconnects by itself after a coordinator restart. The ClientApp the
  SuperNode starts for each message hands the work to this daemon over its local socket
  (``SiteAdmin.Work``), so a round does not load the model again.
* **serves routing over gRPC** (:mod:`fedprag.client.routing_service`), with the pool the
  coordinator released; only passages with a routing row are searched. When a released version
  no longer fits the site's rows (another number of experts or groups), the rows are fitted again,
  routing-only, against it. In distilled mode (``federation.mode = "distilled"``) it serves with
  the released generator instead: every stored passage is searched, and each query's top passages
  become one LoRA at the site (on a second copy of the base model, so queries and rounds never
  share one).
* **watches its inbox.** A file that lands in ``<inbox>`` (``.jsonl``, ``.parquet`` or ``.txt``;
  move it in atomically, or it is taken once its size held for one poll) is ingested whole or not
  at all, then moved to ``inbox/done/``; a bad one goes to ``inbox/rejected/`` beside a
  ``.error`` file naming the row. New passages are encoded at once, routing-only against the
  released pool, with no new round, and served from then on (in distilled mode they need no
  encoding and are served as soon as they are indexed). A pool that cannot encode new passages
  leaves them pending, says why in the status, and they wait for the next round.
* **answers ``fedprag client status``** on its local socket: passages, encoded and pending,
  rounds joined, pool version, queries served, last error.

SIGTERM or SIGINT stop it cleanly: the inbox scan finishes its file, the services drain, the
SuperNode is stopped. After a SIGKILL at any point it restarts with nothing lost: every store
write is atomic and under the store's lock, an inbox file leaves the inbox only after its passages
are stored (ingesting it again is a no-op), and pending passages are encoded on the next start.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import faiss
import grpc
import psutil
import torch

from fedprag.client.modes import SITE_MODES
from fedprag.client.routing_service import RoutingCounters, RoutingLimits, ServerTls, SiteIndex, serve_routing
from fedprag.client.sources import read_sources
from fedprag.client.store import SiteStore
from fedprag.client.train import CannotEncode, RememberedEmbed, site_augmenter
from fedprag.shared.config import ConfigError, FedpragConfig
from fedprag.shared.data.schema import DatasetError
from fedprag.shared.io import atomic_write_text, read_tokens
from fedprag.shared.log import get_logger
from fedprag.shared.lora.store import EncodingMismatch
from fedprag.shared.models.loading import load_causal_lm
from fedprag.shared.processes import bin_path, flower_env, free_port, signal_group, spawn, stop
from fedprag.shared.proto import routing_pb2, routing_pb2_grpc
from fedprag.shared.retrieval.encoder import SentenceEncoder
from fedprag.shared.wire import RELEASES, TASKS, WireError, WireMessage

log = get_logger(__name__)

DAEMON_FILE = "daemon.json"  # in the data directory while the daemon runs: pid, ports, socket
INBOX_SUFFIXES = (".jsonl", ".parquet", ".txt")
CONNECTED = "SuperNode ID:"


def admin_address(data_dir: str | Path) -> str:
    """The daemon's local socket: ``unix:`` in a folder only this user can open (short enough for any data dir)."""
    folder = Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp") / f"fedprag-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    folder.chmod(0o700)
    name = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:16]
    return f"unix://{folder / name}.sock"


def running_daemon(data_dir: str | Path) -> dict | None:
    """The record of the daemon serving ``data_dir``, if one is alive."""
    path = Path(data_dir) / DAEMON_FILE
    try:
        record = json.loads(path.read_text())
        alive = psutil.pid_exists(record["pid"]) and psutil.Process(record["pid"]).status() != psutil.STATUS_ZOMBIE
    except (OSError, ValueError, KeyError, psutil.Error):
        return None
    return record if alive else None


def daemon_status(data_dir: str | Path, timeout: float = 5.0) -> routing_pb2.SiteStatus:
    """Ask the running daemon of ``data_dir`` for its status (``grpc.RpcError`` if it does not answer)."""
    with grpc.insecure_channel(admin_address(data_dir)) as channel:
        return routing_pb2_grpc.SiteAdminStub(channel).Status(routing_pb2.StatusRequest(), timeout=timeout)


ADMIN_OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
"""The local socket carries whole pools (a round task, a site update): no message size limit."""


def status_fields(status: routing_pb2.SiteStatus) -> dict[str, object]:
    """A status as plain Python values, field by field (repeated fields as lists)."""
    return {f.name: (list(getattr(status, f.name)) if f.is_repeated else getattr(status, f.name))
            for f in status.DESCRIPTOR.fields}


class _Admin(routing_pb2_grpc.SiteAdminServicer):
    def __init__(self, daemon: SiteDaemon):
        self.daemon = daemon

    def Status(self, request: routing_pb2.StatusRequest, context: grpc.ServicerContext) -> routing_pb2.SiteStatus:
        return self.daemon.status()

    def Work(self, request: routing_pb2.WireRecord, context: grpc.ServicerContext) -> routing_pb2.WireRecord:
        mode = self.daemon.mode
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
            return self.daemon.work(message).to_proto()
        except Exception as exc:  # noqa: BLE001 - the reply names the failure's kind only (its text could quote a passage)
            log.error("daemon.work.failed", kind=type(exc).__name__, message=request.kind)
            context.abort(grpc.StatusCode.INTERNAL, type(exc).__name__)


class SiteDaemon:
    """One site's long-running process (see the module docstring)."""

    def __init__(self, config: FedpragConfig):
        site = config.site
        try:
            site.check_files()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.config = site
        self.root = Path(site.data_dir)
        self.store = SiteStore(self.root, site.site_id or None)
        self.inbox = Path(site.inbox) if site.inbox else self.root / "inbox"
        for folder in (self.inbox, self.inbox / "done", self.inbox / "rejected"):
            folder.mkdir(parents=True, exist_ok=True)
        torch.set_num_threads(site.threads)
        faiss.omp_set_num_threads(site.threads)  # OpenMP threads spin between a routing request's tiny searches
        self.base = load_causal_lm(config.model.path, show_progress=False)
        self.encoder = SentenceEncoder()
        questions_embed = RememberedEmbed(self.encoder.embed)  # the router's training questions, embedded once
        self.mode = SITE_MODES[config.federation.mode](self.store, self.base, questions_embed,
                                                       site_augmenter(self.store, self.base, config.augment))
        self.tokens = read_tokens(site.tokens_file)
        self.counters = RoutingCounters()
        self.router: SiteIndex | None = None
        self.encoding = self.mode.unreleased
        self.last_error = ""
        self.inbox_accepted = self.inbox_rejected = 0
        self.started = time.monotonic()
        self.stopping = threading.Event()
        self._work_lock = threading.Lock()  # one round, release or encoding at a time
        self._sizes: dict[Path, int] = {}
        self.supernode: subprocess.Popen | None = None
        self.supernode_log = self.root / "logs" / "supernode.log"
        self.routing_port = 0
        self._servers: list[grpc.Server] = []

    # -- the released version and the routing it serves -------------------------------------
    def refresh(self) -> None:
        """Serve the version the store holds: a new router over its passages, then serve the pending."""
        serving = self.mode.serve(self.encoder, self.config.factor_noise)
        self.router, self.encoding = serving.router, serving.encoding
        if serving.error:
            self.last_error = serving.error
        self.encode()

    def encode(self) -> None:
        """Serve the passages stored since the router was made (encoding them where the mode must)."""
        if self.router is None:
            return
        try:
            added = self.mode.encode(self.router)
        except (CannotEncode, EncodingMismatch) as exc:
            self.last_error = str(exc)
            log.warning("daemon.encode.refused", reason=self.last_error)
            return
        except Exception as exc:  # noqa: BLE001 - the passages stay pending; the daemon keeps serving
            self.last_error = f"encoding failed: {type(exc).__name__}"  # the kind only: a message could quote text
            log.error("daemon.encode.failed", kind=type(exc).__name__)
            return
        if added:
            log.info("daemon.encode.served", passages=added, served=len(self.router))

    def work(self, request: WireMessage) -> WireMessage:
        """A round task or a release, handed over by this site's ClientApp; a release is served
        (rows fitted again where needed) before it is acknowledged."""
        with self._work_lock:
            try:
                return self.mode.work(request, kept=self.refresh)
            except Exception as exc:
                self.last_error = f"{request.KIND}: {type(exc).__name__}"
                raise

    # -- the inbox --------------------------------------------------------------------------
    def _arrived(self) -> Iterator[Path]:
        """Inbox files whose size held since the last scan, oldest first."""
        sizes = {}
        for path in sorted(self.inbox.iterdir(), key=lambda p: p.stat().st_mtime if p.exists() else 0):
            if path.is_file() and path.suffix in INBOX_SUFFIXES and not path.name.startswith("."):
                sizes[path] = path.stat().st_size
        ready = [p for p, size in sizes.items() if self._sizes.get(p) == size]
        self._sizes = {p: s for p, s in sizes.items() if p not in ready}
        yield from ready

    def scan_inbox(self) -> int:
        """Ingest every settled inbox file, then encode what it added; returns the files taken."""
        taken = 0
        for path in self._arrived():
            try:
                report = self.store.add_read(read_sources([path]))
            except DatasetError as exc:
                self.inbox_rejected += 1
                self.last_error = f"inbox: {exc}"
                atomic_write_text(self.inbox / "rejected" / f"{path.name}.error", f"{exc}\n")
                os.replace(path, self.inbox / "rejected" / path.name)
                log.warning("daemon.inbox.rejected", file=path.name, reason=str(exc)[:300])
                continue
            os.replace(path, self.inbox / "done" / path.name)
            self.inbox_accepted += 1
            taken += 1
            log.info("daemon.inbox.ingested", file=path.name, added=report.added, unchanged=report.unchanged,
                     split=report.split)
        if taken:
            with self._work_lock:
                self.encode()
        return taken

    # -- the SuperNode ----------------------------------------------------------------------
    def _stop_orphan(self) -> None:
        """Stop the SuperNode a killed daemon left running (recorded in ``daemon.json``, checked by start time)."""
        try:
            record = json.loads((self.root / DAEMON_FILE).read_text())
            orphan = psutil.Process(record["supernode"])
            if abs(orphan.create_time() - record["supernode_started"]) < 1e-3:
                log.warning("daemon.supernode.orphan", pid=orphan.pid)
                signal_group(orphan.pid, signal.SIGKILL)
        except (OSError, ValueError, KeyError, TypeError, psutil.Error):
            return

    def _write_record(self) -> None:
        supernode = self.supernode.pid if self.supernode is not None else None
        started = psutil.Process(supernode).create_time() if supernode is not None else None
        with self.store.locked():  # opening the store elsewhere clears temp files, so write under its lock
            atomic_write_text(self.root / DAEMON_FILE, json.dumps(
                {"pid": os.getpid(), "routing_port": self.routing_port, "admin": admin_address(self.root),
                 "supernode": supernode, "supernode_started": started}, indent=2))

    def _start_supernode(self) -> None:
        site = self.config
        node_config = f"site-dir='{self.root.resolve()}' daemon='{admin_address(self.root)}'"
        argv = [bin_path("flower-supernode"), "--root-certificates", site.ca_cert, "--superlink", site.superlink,
                "--auth-supernode-private-key", site.auth_key, "--node-config", node_config,
                "--host", "127.0.0.1", "--port", str(free_port())]
        self.supernode = spawn(argv, self.supernode_log, flower_env(self.root / "flwr"), cwd=self.root)
        self._write_record()
        log.info("daemon.supernode.start", pid=self.supernode.pid, superlink=site.superlink)

    def supervise(self) -> None:
        """Start the SuperNode, or start it again if it exited."""
        if not self.config.superlink:
            return
        if self.supernode is not None and self.supernode.poll() is not None:
            self.last_error = f"supernode exited with code {self.supernode.returncode}; restarted"
            log.warning("daemon.supernode.exited", code=self.supernode.returncode)
            self.supernode = None
        if self.supernode is None:
            self._start_supernode()

    def supernode_connected(self) -> bool:
        if self.supernode is None or self.supernode.poll() is not None or not self.supernode_log.is_file():
            return False
        return CONNECTED in self.supernode_log.read_text(encoding="utf-8", errors="replace")

    # -- status and lifecycle ---------------------------------------------------------------
    def status(self) -> routing_pb2.SiteStatus:
        state = self.store.read_state()  # a copy: a round in another thread may be changing the store's
        served = len(self.router) if self.router is not None else 0
        passages = len(self.store.passages())
        return routing_pb2.SiteStatus(
            site=state.site_id, passages=passages, encoded=served, pending=passages - served, rounds_joined=state.rounds_joined,
            pool_version=self.router.pool_version if self.router is not None else 0,
            queries_served=self.counters.queries, last_error=self.last_error,
            uptime_seconds=time.monotonic() - self.started,
            routing_address=f"{self.config.routing_address.rpartition(':')[0]}:{self.routing_port}",
            supernode_connected=self.supernode_connected(), inbox_accepted=self.inbox_accepted,
            inbox_rejected=self.inbox_rejected, encoding=self.encoding, serving=self.router is not None)

    def start(self) -> None:
        """Open both services, write ``daemon.json``, start the SuperNode, then serve the released pool
        (encoding what is pending; routing calls are refused as unavailable until then)."""
        tls = ServerTls(Path(self.config.routing_cert), Path(self.config.routing_key))
        limits = RoutingLimits(self.config.rate_limit_qps, self.config.rate_limit_burst, self.config.reply_noise)
        server, self.routing_port = serve_routing(lambda: self.router, self.config.routing_address, tls, self.tokens,
                                                  self.counters, limits)
        admin = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=ADMIN_OPTIONS)
        routing_pb2_grpc.add_SiteAdminServicer_to_server(_Admin(self), admin)
        address = admin_address(self.root)
        Path(address.removeprefix("unix://")).unlink(missing_ok=True)  # a socket left by a killed daemon
        admin.add_insecure_port(address)
        admin.start()
        self._servers = [server, admin]
        self._stop_orphan()
        self._write_record()
        self.supervise()
        with self._work_lock:
            self.refresh()
        log.info("daemon.started", site=self.store.state.site_id, routing_port=self.routing_port,
                 passages=len(self.store.passages()), served=len(self.router) if self.router else 0)

    def run(self) -> int:
        """Run until SIGTERM or SIGINT; returns the exit code."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        try:
            self.start()
            while not self.stopping.wait(self.config.poll_seconds):
                self.supervise()
                self.scan_inbox()
        finally:
            self.shutdown()
        return 0

    def shutdown(self) -> None:
        for server in self._servers:
            server.stop(grace=5).wait()
        if self.supernode is not None:
            stop(self.supernode)
        (self.root / DAEMON_FILE).unlink(missing_ok=True)
        log.info("daemon.stopped", site=self.store.state.site_id)

