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

Its parts, one job each: the inbox (:mod:`fedprag.client.inbox`), the SuperNode's supervisor
(:mod:`fedprag.client.supernode`), and two gRPC servers: routing (:mod:`fedprag.client.routing_service`)
and the local socket (:mod:`fedprag.client.admin`). The daemon holds the models and the mode, and
serves the released version.

SIGTERM or SIGINT stop it cleanly: the inbox scan finishes its file, the services drain, the
SuperNode is stopped. After a SIGKILL at any point it restarts with nothing lost: every store
write is atomic and under the store's lock, an inbox file leaves the inbox only after its passages
are stored (ingesting it again is a no-op), and pending passages are encoded on the next start.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import faiss
import grpc
import torch

from fedprag.client.admin import DAEMON_FILE, admin_address, daemon_record, serve_admin
from fedprag.client.inbox import Inbox
from fedprag.client.modes import SITE_MODES
from fedprag.client.routing_service import RoutingCounters, RoutingLimits, ServerTls, SiteIndex, serve_routing
from fedprag.client.store import SiteStore
from fedprag.client.supernode import SupernodeSupervisor
from fedprag.client.train import CannotEncode, RememberedEmbed, site_augmenter
from fedprag.shared.config import ConfigError, FedpragConfig
from fedprag.shared.io import atomic_write_text, read_tokens
from fedprag.shared.log import get_logger
from fedprag.shared.lora.store import EncodingMismatch
from fedprag.shared.models.loading import load_causal_lm
from fedprag.shared.proto import routing_pb2
from fedprag.shared.retrieval.encoder import SentenceEncoder
from fedprag.shared.wire import WireMessage

log = get_logger(__name__)

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
        self.inbox = Inbox(Path(site.inbox) if site.inbox else self.root / "inbox", self.store)
        self.supernode = SupernodeSupervisor(site, self.root)
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
        self.started = time.monotonic()
        self.stopping = threading.Event()
        self._work_lock = threading.Lock()  # one round, release or encoding at a time
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

    def scan_inbox(self) -> int:
        """Ingest every settled inbox file, then serve what it added; returns the files taken."""
        scan = self.inbox.scan()
        if scan.errors:
            self.last_error = scan.errors[-1]
        if scan.taken:
            with self._work_lock:
                self.encode()
        return scan.taken

    def supervise(self) -> None:
        """Keep the SuperNode running (a restart is reported in the status, and recorded)."""
        running = self.supernode.process
        if restarted := self.supernode.check():
            self.last_error = restarted
        if self.supernode.process is not running:
            self._write_record()

    # -- status and lifecycle ---------------------------------------------------------------
    def _write_record(self) -> None:
        record = {"pid": os.getpid(), "routing_port": self.routing_port, "admin": admin_address(self.root),
                  **self.supernode.record()}
        with self.store.locked():  # opening the store elsewhere clears temp files, so write under its lock
            atomic_write_text(self.root / DAEMON_FILE, json.dumps(record, indent=2))

    def status(self) -> routing_pb2.SiteStatus:
        state = self.store.read_state()  # a copy: a round in another thread may be changing the store's
        served = len(self.router) if self.router is not None else 0
        passages = len(self.store.passages())
        return routing_pb2.SiteStatus(
            site=state.site_id, passages=passages, encoded=served, pending=passages - served, rounds_joined=state.rounds_joined,
            pool_version=self.router.version if self.router is not None else 0,
            queries_served=self.counters.queries, last_error=self.last_error,
            uptime_seconds=time.monotonic() - self.started,
            routing_address=f"{self.config.routing_address.rpartition(':')[0]}:{self.routing_port}",
            supernode_connected=self.supernode.connected(), inbox_accepted=self.inbox.accepted,
            inbox_rejected=self.inbox.rejected, encoding=self.encoding, serving=self.router is not None)

    def start(self) -> None:
        """Open both services, write ``daemon.json``, start the SuperNode, then serve the released pool
        (encoding what is pending; routing calls are refused as unavailable until then)."""
        tls = ServerTls(Path(self.config.routing_cert), Path(self.config.routing_key))
        limits = RoutingLimits(self.config.rate_limit_qps, self.config.rate_limit_burst, self.config.reply_noise)
        routing, self.routing_port = serve_routing(lambda: self.router, self.config.routing_address, tls, self.tokens,
                                                   self.counters, limits)
        self._servers = [routing, serve_admin(self, self.root)]
        SupernodeSupervisor.stop_orphan(daemon_record(self.root))  # a killed daemon's
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
        self.supernode.stop()
        (self.root / DAEMON_FILE).unlink(missing_ok=True)
        log.info("daemon.stopped", site=self.store.state.site_id)
