"""Sites on other hosts. The coordinator and the query API run on one host, each of 2 site daemons
on its own, and the operator and the application on a fourth: network namespaces with their own
addresses on a bridge the test makes (tests/netns.py), and certificates that name those addresses.

``fedprag coordinator run`` starts the coordinator on the session's Ray; the sites' keys in its
folder are admitted; the operator runs a campaign (a round and the release) with
``fedprag federate --coordinator`` from the fourth host; then the application asks over HTTPS,
verifying the certificate. Last, one site's link is cut while questions come: the API keeps
answering from the other site and names the cut one in the trace.
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest
import tomli_w

from fedprag.client.admin import DAEMON_FILE, daemon_status
from fedprag.cluster.certs import TlsFiles, write_node_keys, write_routing_cert, write_tls
from fedprag.cluster.serving.app import start
from fedprag.cluster.serving.app import stop as stop_serving
from fedprag.cluster.simulation import prepare_sites
from fedprag.coordinator.app import recorded_rounds
from fedprag.shared.config import load_config
from fedprag.shared.data.benchmark import BenchmarkSpec, make_benchmark
from fedprag.shared.metrics import exact_match
from fedprag.shared.processes import Processes, Started, bin_path, flower_env, free_port
from tests import netns, phases
from tests.integration.federation_support import LAST_LAYER

NETNS = netns.available()
pytestmark = [pytest.mark.integration, pytest.mark.uses("hosts_federation"),
              pytest.mark.skipif(not NETNS, reason="network namespaces need root and iproute2 (CI runs as root)")]

KEY = "hosts-key-" + secrets.token_hex(8)
SITES = ("site-a", "site-b")
POLY = {"federation": {"rounds": 1, "local_epochs": 100, "min_sites": 2, "home_experts": 0},
        "poly": {**tomllib.loads(LAST_LAYER.read_text())["poly"], "batch_size": 64, "incremental_epochs": 32}}
"""The session's Poly-PRAG federation's settings (tests/integration/federation_support.py), one round."""

ASK = """
import json, ssl, sys, time
import httpx
url, key, ca, seconds = sys.argv[1:5]
questions = json.loads(sys.stdin.read())
client = httpx.Client(verify=ssl.create_default_context(cafile=ca), timeout=30)
replies, deadline, i = [], time.monotonic() + float(seconds), 0
while i < len(questions) or time.monotonic() < deadline:
    sent = time.monotonic()
    reply = client.post(f"{url}/v1/query", json={"question": questions[i % len(questions)]},
                        headers={"Authorization": f"Bearer {key}"})
    replies.append({"status": reply.status_code, "sent": sent, **(reply.json() if reply.status_code == 200 else {})})
    i += 1
print(json.dumps(replies))
"""
"""The application, on its own host: asks every question once (and on, for ``seconds``), verifying
the API's certificate; prints every reply with the monotonic time its request was sent."""


@dataclass
class Sites:
    """The coordinator on the coordinator's host (the root namespace), each site's daemon on its own,
    after the operator's campaign from the client's host."""

    network: netns.Network
    processes: Processes
    work: Path
    tls: TlsFiles
    tokens: Path
    coordinator: Started
    coordinator_config: Path
    campaign: subprocess.CompletedProcess
    routing: list[str]
    questions: list


@contextmanager
def _hosts_federation(work: Path) -> Iterator[Sites]:
    """Started in the background (tests/phases.py): it waits for the session's Ray, which only the
    main thread may start, then mostly waits on its processes."""
    processes = Processes(work / "logs", work)
    with netns.Network([*SITES, "client"]) as network:
        try:
            yield _federate(work, network, processes, phases.shared("ray_session").started_elsewhere())
        finally:
            processes.stop()


def _federate(work: Path, network: netns.Network, processes: Processes, ray_address: str) -> Sites:
    certs = work / "certs"
    tls = write_tls(certs, hosts=[network.address])
    keys_dir = certs / "admitted"
    keys_dir.mkdir()
    tokens = certs / "routing-tokens"
    tokens.write_text(secrets.token_urlsafe(32) + "\n")
    dataset = make_benchmark(BenchmarkSpec(people=12, sites=2, alpha=100.0, seed=5))
    stores = prepare_sites(dataset, work / "sites")
    port = free_port()
    coordinator_config = work / "coordinator.toml"
    coordinator_config.write_text(tomli_w.dumps({
        **POLY, "federation": {**POLY["federation"], "work_dir": str(work / "coordinator")},
        "coordinator": {"host": network.address, "port": port, "ca_cert": str(tls.ca_cert),
                        "tls_cert": str(tls.server_cert), "tls_key": str(tls.server_key), "keys_dir": str(keys_dir),
                        "admit_every_s": 1.0, "ray_address": ray_address}}))
    for name in SITES:  # the operator admits each site's public key
        shutil.copy(write_node_keys(certs, name).public_key, keys_dir / f"{name}.pub")
    coordinator = processes.spawn("coordinator", [bin_path("fedprag"), "--quiet", "coordinator", "run", "--config",
                                                  str(coordinator_config)], flower_env(work / "flwr" / "coordinator"))
    for name, store in zip(SITES, stores):  # each site on its host, dialing the coordinator's address
        host = network.hosts[name]
        routing = write_routing_cert(certs, name, hosts=[host.address])
        site_config = work / f"{name}.toml"
        site_config.write_text(tomli_w.dumps({
            **POLY, "site": {"data_dir": str(store.root), "superlink": f"{network.address}:{port}",
                             "ca_cert": str(tls.ca_cert), "auth_key": str(certs / "nodes" / name),
                             "routing_address": f"{host.address}:0", "routing_cert": str(routing.server_cert),
                             "routing_key": str(routing.server_key), "tokens_file": str(tokens)}}))
        processes.spawn(f"daemon-{name}", host.command([bin_path("fedprag"), "--quiet", "client", "run", "--config",
                                                        str(site_config)]), flower_env(work / "flwr" / name))
    routing = []
    for name, store in zip(SITES, stores):
        _wait_for(f"{name}'s SuperNode", lambda root=store.root: _connected(root))
        routing.append(f"{store.root.name}={network.hosts[name].address}:"
                       f"{json.loads((store.root / DAEMON_FILE).read_text())['routing_port']}")
    campaign = subprocess.run(network.hosts["client"].command([
        bin_path("fedprag"), "--quiet", "federate", "--coordinator", f"{network.address}:{port}",
        "--ca", str(tls.ca_cert), "--rounds", "1"]), capture_output=True, text=True, timeout=600, check=False,
        env=flower_env(work / "flwr" / "operator"))  # the operator, on another host
    questions = [q for q in dataset.questions if q.kind == "single"][:12]
    return Sites(network, processes, work, tls, tokens, coordinator, coordinator_config, campaign, routing, questions)


if NETNS:
    phases.register("hosts_federation", _hosts_federation, early=True)


@dataclass
class Hosts:
    """The sites' federation, and the query API on the coordinator's host, on the session's Ray."""

    sites: Sites
    url: str

    def ask(self, seconds: float = 0.0) -> subprocess.Popen:
        """The application's questions, from its host; read the replies with :func:`replies`."""
        asking = subprocess.Popen(self.sites.network.hosts["client"].command([
            sys.executable, "-c", ASK, self.url, KEY, str(self.sites.tls.ca_cert), str(seconds)]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        asking.stdin.write(json.dumps([q.text for q in self.sites.questions]))
        asking.stdin.close()
        return asking


def replies(asking: subprocess.Popen) -> list[dict]:
    out = asking.stdout.read()
    assert asking.wait(timeout=120) == 0, asking.stderr.read()[-2000:]
    return json.loads(out)


def _wait_for(what: str, check, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.3)


def _connected(site_dir: Path) -> bool:
    try:
        return daemon_status(site_dir, timeout=2.0).supernode_connected
    except grpc.RpcError:  # not up yet
        return False


@pytest.fixture(scope="module")
def hosts(ray_session, shared_resources):
    """The query API on the coordinator's host, HTTPS with a certificate that names its address."""
    sites = phases.shared("hosts_federation").value(shared_resources)
    address = sites.network.address
    config = load_config(sites.coordinator_config, {
        "serve.host": address, "serve.port": free_port(), "serve.tls_cert": str(sites.tls.server_cert),
        "serve.tls_key": str(sites.tls.server_key), "serve.sites": ",".join(sites.routing),
        "serve.ca_cert": str(sites.tls.ca_cert), "serve.site_token_file": str(sites.tokens), "serve.api_keys": KEY,
        "federation.work_dir": str(sites.work / "coordinator")})
    try:
        yield Hosts(sites, start(config).http)
    finally:
        stop_serving()


def test_a_campaign_from_the_operators_host_trains_and_releases_over_the_network(hosts):
    assert hosts.sites.campaign.returncode == 0, hosts.sites.campaign.stdout[-3000:]
    rounds = recorded_rounds(hosts.sites.work / "coordinator" / "registry")
    assert [r.round for r in rounds] == [1] and len(rounds[0].accepted) == 2


def test_the_application_on_its_host_gets_right_answers_over_https_from_both_sites(hosts):
    answered = replies(hosts.ask())
    assert all(r["status"] == 200 for r in answered)
    assert all(sorted(r["trace"]["sites_answered"]) == ["site-0", "site-1"] for r in answered)
    em = float(np.mean([exact_match(r["answer"], q.answers) for r, q in zip(answered, hosts.sites.questions)]))
    print(f"\nsites on other hosts, fan-out over HTTPS: exact match {em:.2f} on {len(hosts.sites.questions)}")
    assert em >= 0.5  # closed-book is about 0.04 on these questions


def test_a_cut_site_is_named_and_the_other_keeps_answering(hosts):
    asking = hosts.ask(seconds=7.0)
    time.sleep(1.5)
    cut_at = time.monotonic()  # the system's monotonic clock: the client's host reads the same
    hosts.sites.network.hosts["site-a"].cut()
    try:
        answered = replies(asking)
    finally:
        hosts.sites.network.hosts["site-a"].mend()
    assert all(r["status"] == 200 for r in answered)
    after = [r for r in answered if r["sent"] > cut_at]
    assert after and all(list(r["trace"]["sites_failed"]) == ["site-0"] and r["trace"]["sites_answered"] == ["site-1"]
                         for r in after)
    print(f"\nsite-0's link cut: {len(after)} answers after it, each from site-1 alone, naming site-0 "
          f"({after[0]['trace']['sites_failed']['site-0']})")


def test_a_key_taken_out_of_the_folder_is_refused_from_then_on(hosts):
    home = hosts.sites.work / "coordinator" / "coordinator"
    (hosts.sites.work / "certs" / "admitted" / "site-b.pub").unlink()
    _wait_for("site-b's removal", lambda: "site-b.pub" not in json.loads((home / "admitted.json").read_text()),
              timeout=30)
    assert "site-a.pub" in json.loads((home / "admitted.json").read_text())


def test_sigterm_stops_the_coordinator_and_its_superlink(hosts):
    listed = json.loads((hosts.sites.work / "coordinator" / "coordinator" / "logs" / "pids.json").read_text())
    started = [p for pid in [listed["superlink"], *listed["descendants"]] if (p := _alive(pid))]
    assert started  # the SuperLink, and the SuperExec it started
    coordinator = hosts.sites.coordinator
    coordinator.process.send_signal(signal.SIGTERM)
    assert coordinator.process.wait(timeout=120) == 0
    hosts.sites.processes.forget(coordinator)
    assert not [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def _alive(pid: int) -> psutil.Process | None:
    """The process ``pid``, while it runs (psutil's handle knows it by pid and start time)."""
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None
