"""Site daemons as processes: they join the rounds, serve routing over gRPC with TLS and tokens, and
answer for a document dropped into an inbox within 30 s, with no new round.

The federation is the session's Poly-PRAG one (``poly_federation``): a coordinator (SuperLink) and
3 site daemons, each with its SuperNode, on loopback, training a last-layer pool (the configuration
that encodes new passages routing-only) on the built-in model for 2 rounds, with the SuperLink
restarted between them. One person of the benchmark is held out of every site; their passage
arrives later, in site 0's inbox, text only. The questions are asked as the query API asks them:
embeddings over gRPC to every daemon, the blended mixture, one generate.
"""

import json
import os
import signal
import subprocess
import sys
import time

import grpc
import numpy as np
import psutil
import pytest

from fedprag.client.admin import DAEMON_FILE, daemon_status
from fedprag.cluster.serving.fanout import FanOut, RemoteSite, SiteUnavailable
from fedprag.cluster.serving.modes import serving_mode
from fedprag.coordinator.app import recorded_rounds
from fedprag.coordinator.registry import PoolRegistry, registry_dir
from fedprag.coordinator.versions import versions_at
from fedprag.shared.methods.poly.model import PolyModel
from fedprag.shared.metrics import exact_match
from fedprag.shared.models.loading import load_causal_lm
from fedprag.shared.proto import routing_pb2, routing_pb2_grpc
from fedprag.shared.query import QueryEngine
from fedprag.shared.retrieval.encoder import SentenceEncoder
from fedprag.shared.wire import EMBEDDINGS, RoutingRequest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def federation(poly_federation):
    """The session's Poly-PRAG federation."""
    return poly_federation


def _released(federation) -> int:
    """The pool version the coordinator released last (a test of the query API may publish another)."""
    return versions_at(registry_dir(federation.config.federation))[-1]


@pytest.fixture(scope="module")
def query_api(federation):
    """What the query API holds: the base model, the latest pool, the encoder and the fan-out."""
    base = load_causal_lm("tiny")
    pool, _ = PoolRegistry(registry_dir(federation.config.federation), base.digest).latest()
    encoder = SentenceEncoder()
    fanout = FanOut(federation.deployment.routing_sites(), 3, federation.config.poly, serving_mode("poly"))
    engine = QueryEngine(base)
    model = PolyModel(pool, federation.config.poly, name="poly_federated")

    def ask(questions):
        routings = fanout.routings(encoder.embed([q.text for q in questions]))
        return [exact_match(a, q.answers) for a, q in zip(engine.answer(model, [q.text for q in questions], routings),
                                                          questions)]
    return ask


def _questions_about(dataset, passage):
    return [q for q in dataset.questions if q.kind == "single" and q.gold_passage_ids == [passage.passage_id]]


def test_every_site_joined_both_rounds_across_a_coordinator_restart_and_kept_the_released_pool(federation):
    assert [len(r.accepted) for r in federation.rounds] == [3, 3]
    assert all(started.process.poll() is None for started in federation.deployment.daemons.values())
    for store in federation.stores:
        status = daemon_status(store.root)
        assert status.supernode_connected and list(status.rounds_joined) == [1, 2]
        assert status.pool_version == _released(federation) and status.pending == 0 and status.encoded == status.passages > 0


def test_a_document_dropped_in_the_inbox_with_no_qa_is_answered_within_30_s_without_a_round(federation, query_api):
    site, new, dataset = federation.stores[0].root, federation.new, federation.dataset
    questions = _questions_about(dataset, new)
    before = query_api(questions)
    rounds_before = len(federation.rounds)
    staged = site / "new-document.tmp"
    # The text alone, as an owner drops it: the daemon's model-based augmenter writes its QA pairs.
    staged.write_text(json.dumps({"id": new.passage_id, "text": new.text}) + "\n")
    started = time.monotonic()
    os.replace(staged, site / "inbox" / "new-document.jsonl")  # moved in atomically, as the daemon asks
    while (status := daemon_status(site)).pending or status.encoded < status.passages or status.inbox_accepted < 1:
        assert time.monotonic() - started < 30, status
        time.sleep(0.2)
    after = query_api(questions)
    elapsed = time.monotonic() - started
    print(f"\ninbox → answered: {elapsed:.1f} s; exact match on the new person's {len(questions)} single-hop "
          f"questions {np.mean(before):.2f} before, {np.mean(after):.2f} after")
    assert elapsed < 30
    # Measured: 0.00 before, 0.67 after with the QA pairs the daemon's model wrote and 32 steps for
    # the new routing row (8 steps gave 0.17 to 0.50 from run to run); the pool was fitted to this
    # federation's 59 passages only.
    assert np.mean(after) >= 0.5 and np.mean(after) > np.mean(before), (before, after)
    assert (site / "inbox" / "done" / "new-document.jsonl").is_file()
    assert len(recorded_rounds(registry_dir(federation.config.federation))) == rounds_before  # no new round


def test_a_bad_inbox_file_is_set_aside_with_its_row_named_and_nothing_stored(federation):
    site = federation.stores[1].root
    before = daemon_status(site)
    staged = site / "bad.tmp"
    staged.write_text(json.dumps({"id": "ok-1", "text": "A fine passage."}) + "\n" + '{"id": 5, "text": null}\n')
    os.replace(staged, site / "inbox" / "bad.jsonl")
    error = site / "inbox" / "rejected" / "bad.jsonl.error"
    deadline = time.monotonic() + 20
    while not error.is_file():
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert "bad.jsonl:2" in error.read_text()
    after = daemon_status(site)
    assert after.passages == before.passages and after.inbox_rejected == before.inbox_rejected + 1
    assert "bad.jsonl:2" in after.last_error


def test_the_routing_service_wants_the_federations_ca_a_token_and_a_deadline(federation):
    deployment = federation.deployment
    site = deployment.routing_sites()[0]
    request = RoutingRequest(k=3, score_temperature=0.05,
                             queries={EMBEDDINGS: np.ones((1, 384), dtype=np.float32) / 384 ** 0.5}).to_proto()
    credentials = grpc.ssl_channel_credentials(root_certificates=deployment.tls.ca_cert.read_bytes())
    with grpc.secure_channel(site.address, credentials) as channel:
        stub = routing_pb2_grpc.SiteRoutingStub(channel)
        token = (("authorization", f"Bearer {deployment.token}"),)
        assert len(stub.Route(request, timeout=5, metadata=token).replies) == 1
        refusals = {
            "no token": lambda: stub.Route(request, timeout=5),
            "a wrong token": lambda: stub.Route(request, timeout=5, metadata=(("authorization", "Bearer nope"),)),
            "no deadline": lambda: stub.Route(request, metadata=token),
            "k = 0": lambda: stub.Route(replace_k(request, 0), timeout=5, metadata=token),
            "another kind": lambda: stub.Route(routing_pb2.WireRecord(kind="site_update"), timeout=5, metadata=token),
        }
        codes = {}
        for what, call in refusals.items():
            try:
                call()
            except grpc.RpcError as refused:
                codes[what] = refused.code()
        assert codes == {"no token": grpc.StatusCode.UNAUTHENTICATED, "a wrong token": grpc.StatusCode.UNAUTHENTICATED,
                         "no deadline": grpc.StatusCode.INVALID_ARGUMENT, "k = 0": grpc.StatusCode.INVALID_ARGUMENT,
                         "another kind": grpc.StatusCode.INVALID_ARGUMENT}
    other_ca = deployment.certs / "routing" / "other-ca.crt"
    other_ca.write_bytes(deployment.tls.server_cert.read_bytes())  # a certificate that did not sign the site's
    with pytest.raises(SiteUnavailable, match="UNAVAILABLE"):
        RemoteSite("x", site.address, other_ca, deployment.token, 5.0).route(np.ones((1, 384), np.float32), 3, 0.05)


def replace_k(request, k):
    changed = routing_pb2.WireRecord()
    changed.CopyFrom(request)
    changed.counts["k"] = k
    return changed


def test_client_status_asks_the_running_daemon(federation):
    site = federation.stores[2].root
    federation.deployment.routing_sites()[2].route(np.ones((1, 384), np.float32) / 384 ** 0.5, 3, 0.05)
    shown = subprocess.run([sys.executable, "-m", "fedprag.cli", "client", "status", str(site)],
                           capture_output=True, text=True, timeout=60, check=True)
    status = json.loads(shown.stdout)
    assert status["daemon"] == "running" and status["rounds_joined"] == [1, 2] and status["pool_version"] == _released(federation)
    assert status["queries_served"] > 0 and status["encoding"].startswith("routing-only")


def test_a_caller_that_asks_too_fast_is_slowed_down(federation):
    site = federation.deployment.routing_sites()[1]
    batch = np.ones((256, 384), dtype=np.float32) / 384 ** 0.5
    with pytest.raises(SiteUnavailable, match="RESOURCE_EXHAUSTED: rate limit"):
        for _ in range(40):  # 10,240 queries at once, against a burst of 2,000 refilled at 500 per second
            site.route(batch, 3, 0.05)
    time.sleep(4.5)  # the bucket refills
    assert len(site.route(batch[:1], 3, 0.05)) == 1


def test_sigterm_stops_every_daemon_cleanly(federation):
    deployment = federation.deployment
    daemons = dict(deployment.daemons)
    supernodes = [child for started in daemons.values()
                  for child in psutil.Process(started.process.pid).children() if "supernode" in " ".join(child.cmdline())]
    assert len(supernodes) == 3
    try:
        for started in daemons.values():
            started.process.send_signal(signal.SIGTERM)
        for started in daemons.values():
            assert started.process.wait(timeout=60) == 0
        assert not any(s.is_running() and s.status() != psutil.STATUS_ZOMBIE for s in supernodes)
        for store in federation.stores:
            assert not (store.root / DAEMON_FILE).exists()
    finally:
        deployment.revive()  # the session's federation, as it was
