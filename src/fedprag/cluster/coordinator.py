"""``fedprag coordinator run``: the operator's coordinator, a long-lived actor on the Ray cluster
that also runs the query API.

The actor holds a :class:`Coordinator`:

* the SuperLink (:class:`~fedprag.cluster.superlink.SuperLink`) with TLS and SuperNode
  authentication on ``coordinator.host:port``, its state under ``<federation.work_dir>/coordinator``;
* the admission of sites: every ``<site>.pub`` in ``coordinator.keys_dir`` is registered, and a key
  removed from the folder is unregistered, checked every ``coordinator.admit_every_s``;
* campaigns: ``flwr run`` of fedprag's Flower app on its own SuperLink (the rounds, then the
  release), every ``coordinator.campaign_every_s``, or when an operator asks
  (``fedprag federate --coordinator HOST:PORT``). The ServerApp publishes each round to
  ``<federation.work_dir>/registry``, where the query API's replicas pick up a new version.

Why an actor rather than a RayJob per campaign: the SuperLink must outlive campaigns (the sites
keep their SuperNodes connected to it between them), and Flower's SuperExec already starts a
process per campaign. As an actor it is placed on the head node (where the Fleet API's Service
points), is restarted by Ray if its process dies (state on disk: the SuperLink's database and the
admitted keys), and stops with the ``fedprag coordinator run`` process that owns it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedprag.cluster.certs import TlsFiles
from fedprag.cluster.superlink import SuperLink, SuperLinkError
from fedprag.shared.config import CONFIG_ENV, ConfigError, FedpragConfig, config_to_toml, load_config
from fedprag.shared.io import atomic_write_text
from fedprag.shared.log import configure as configure_logging
from fedprag.shared.log import get_logger
from fedprag.shared.processes import Processes, Started, flower_env

log = get_logger(__name__)

ACTOR_NAME = "fedprag-coordinator"
"""The actor's name in the Ray namespace ``fedprag``: one coordinator per Ray cluster."""


class Coordinator:
    """The SuperLink, the sites it admits, and the campaigns it runs; started by :meth:`start`,
    stopped (with every process it started) by :meth:`stop`."""

    def __init__(self, config: FedpragConfig):
        settings = config.coordinator
        work = Path(config.federation.work_dir).absolute()  # the ServerApp runs in another folder
        self.config = dataclasses.replace(config, federation=dataclasses.replace(config.federation, work_dir=str(work)))
        self.home = work / "coordinator"
        self.keys_dir = Path(settings.keys_dir).absolute()
        self.config_file = self.home / "fedprag.toml"
        self.processes = Processes(self.home / "logs", self.home)
        tls = TlsFiles(*(Path(p).absolute() for p in (settings.ca_cert, settings.tls_cert, settings.tls_key)))
        self.superlink = SuperLink(self.home / "flwr", tls, self._launch, host=settings.host, port=settings.port)
        self.admitted: dict[str, dict[str, Any]] = {}  # key file name: its node id and digest
        self.campaigns: list[dict[str, Any]] = []
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def _launch(self, name: str, argv: list[str], home: Path) -> Started:
        """The SuperLink's process; its ServerApps read the coordinator's configuration file."""
        return self.processes.spawn(name, argv, {**flower_env(home), CONFIG_ENV: str(self.config_file)})

    @property
    def _admitted_file(self) -> Path:
        return self.home / "admitted.json"

    def start(self) -> str:
        """Start the SuperLink, admit the keys in the folder, and start admitting (and, on a
        schedule, campaigning) in the background; returns the SuperLink's address. On failure,
        whatever started is stopped."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.processes.stop_leftovers()  # a restarted actor: what its last life started, if it outlived it
        atomic_write_text(self.config_file, config_to_toml(self.config))
        if self._admitted_file.is_file():  # a restart: the SuperLink's database kept these registrations
            self.admitted = json.loads(self._admitted_file.read_text())
        try:
            self.superlink.start()
            self.admit()
        except BaseException:
            self.processes.stop()
            raise
        settings = self.config.coordinator
        self._every(settings.admit_every_s, self.admit, "admit")
        if settings.campaign_every_s:
            self._every(settings.campaign_every_s, self.campaign, "campaign")
        log.info("coordinator.started", address=self.superlink.address, admitted=len(self.admitted),
                 campaign_every_s=settings.campaign_every_s)
        return self.superlink.address

    def _every(self, seconds: float, work: Callable[[], object], name: str) -> None:
        """Run ``work`` every ``seconds`` in a thread of its own until :meth:`stop`; a pass that
        fails is logged, and the next one runs."""
        def loop() -> None:
            while not self._stopping.wait(seconds):
                try:
                    work()
                except Exception as exc:  # noqa: BLE001 (the coordinator outlives a failed pass)
                    log.error(f"coordinator.{name}.failed", reason=f"{type(exc).__name__}: {exc}"[-300:])

        thread = threading.Thread(target=loop, name=f"coordinator-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def admit(self) -> None:
        """Register every key in the folder not yet admitted (or changed), unregister every admitted key
        no longer there; a key the SuperLink refuses is logged and tried again on the next pass."""
        present = {}
        for path in sorted(self.keys_dir.glob("*.pub")):
            try:
                present[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError:  # swapped while listed (a ConfigMap's update): the next pass sees it
                continue
        for name, entry in list(self.admitted.items()):
            if present.get(name) != entry["sha256"]:
                self._unregister(name, entry["node_id"])
        for name, digest in present.items():
            if name not in self.admitted:
                self._register(name, digest)
        atomic_write_text(self._admitted_file, json.dumps(self.admitted, indent=2))
        self.processes.remember_descendants()

    def _register(self, name: str, digest: str) -> None:
        try:
            node_id = self.superlink.control.register(self.keys_dir / name)
        except SuperLinkError as exc:
            log.warning("coordinator.site.refused", key=name, reason=str(exc)[-200:])
            return
        self.admitted[name] = {"node_id": node_id, "sha256": digest}
        log.info("coordinator.site.admitted", key=name, node_id=node_id)

    def _unregister(self, name: str, node_id: int) -> None:
        try:
            self.superlink.control.unregister(node_id)
        except SuperLinkError as exc:
            log.warning("coordinator.site.remove_failed", key=name, node_id=node_id, reason=str(exc)[-200:])
            return
        del self.admitted[name]
        log.info("coordinator.site.removed", key=name, node_id=node_id)

    def campaign(self) -> bool:
        """Run ``federation.rounds`` more rounds, then the release; whether the release was done.
        The ServerApp's log goes to ``logs/campaign-<n>.log``."""
        started = time.monotonic()
        output = self.home / "logs" / f"campaign-{len(self.campaigns) + 1}.log"
        log.info("coordinator.campaign.start", more_rounds=self.config.federation.rounds, log=str(output))
        with open(output, "a", encoding="utf-8") as out:
            def passed_on(line: str) -> None:  # the ServerApp's log, and its processes noted
                out.write(line)
                self.processes.remember_descendants()

            released = self.superlink.control.campaign({"more_rounds": self.config.federation.rounds}, passed_on)
        self.campaigns.append({"released": released, "seconds": round(time.monotonic() - started, 1)})
        (log.info if released else log.error)("coordinator.campaign.done", **self.campaigns[-1])
        return released

    def status(self) -> dict[str, Any]:
        """What an operator asks: the address, the admitted keys, the campaigns run."""
        return {"address": self.superlink.address, "admitted": sorted(self.admitted),
                "campaigns": list(self.campaigns),
                "superlink_running": self.superlink.started is not None and self.superlink.started.process.poll() is None}

    def stop(self) -> None:
        """Stop the SuperLink and every process it started (a campaign under way ends with them),
        then the background threads."""
        self._stopping.set()
        self.processes.stop()
        for thread in self._threads:
            thread.join(timeout=30)
        log.info("coordinator.stopped")


class CoordinatorActor:
    """The Ray actor that holds the :class:`Coordinator`, started as the actor starts (so a
    restarted actor resumes with its state on disk)."""

    def __init__(self, config_toml: str):
        configure_logging()
        with tempfile.TemporaryDirectory() as folder:  # the driver may run on another node
            (Path(folder) / "fedprag.toml").write_text(config_toml, encoding="utf-8")
            self.coordinator = Coordinator(load_config(Path(folder) / "fedprag.toml"))
        self.coordinator.start()

    def status(self) -> dict[str, Any]:
        return self.coordinator.status()

    def stop(self) -> None:
        self.coordinator.stop()


def run(config: FedpragConfig, on_ready: Callable[[str], None] = print) -> int:
    """``fedprag coordinator run``: start the coordinator's actor on Ray (``coordinator.ray_address``,
    else a Ray of its own), report its address to ``on_ready``, and hold it until SIGTERM or SIGINT;
    then stop it and its processes. While the actor restarts after a crash, it waits for it;
    returns 0, or 1 if the actor died for good (its constructor failed: the reason is logged)."""
    import ray
    from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError

    from fedprag.cluster.serving.ray_start import init_ray

    init_ray(config.coordinator.ray_address or None, num_cpus=None)
    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopped.set())
    try:
        actor = (ray.remote(CoordinatorActor)
                 .options(name=ACTOR_NAME, namespace="fedprag", num_cpus=0, max_restarts=-1, max_task_retries=-1,
                          max_concurrency=4, resources={"node:__internal_head__": 0.001})
                 .remote(config_to_toml(config)))
    except ValueError:  # the name is taken
        ray.shutdown()
        raise ConfigError(f"coordinator.ray_address: a coordinator already runs on this Ray cluster "
                          f"(actor {ACTOR_NAME} in namespace fedprag)") from None
    try:
        status = ray.get(actor.status.remote())
        on_ready(f"coordinator: SuperLink at {status['address']} (sites' Fleet API and operators' Control API), "
                 f"{len(status['admitted'])} site key(s) admitted; registry {Path(config.federation.work_dir).absolute() / 'registry'}")
        while not stopped.wait(5.0):
            try:
                ray.get(actor.status.remote(), timeout=60)
            except (ActorUnavailableError, GetTimeoutError):  # restarting, or busy: ask again
                log.warning("coordinator.actor.unavailable")
        ray.get(actor.stop.remote(), timeout=120)
        return 0
    except ActorDiedError as exc:
        log.error("coordinator.actor.died", reason=str(exc)[-600:])
        return 1
    except GetTimeoutError:
        log.error("coordinator.actor.stop_timeout", advice="the SuperLink may outlive the actor; the next start stops it")
        return 1
    finally:
        ray.kill(actor, no_restart=True)
        ray.shutdown()
