"""What leaves a site, read on the wire, in a real federated run followed by routed queries, in both modes.

In Poly-PRAG mode a round carries the expert pool and the replies carry expert mixtures; in
distilled mode a round carries the generator and the replies carry the LoRA factors each site's
generator made from its passages. Random canary strings are planted in the sites' passages. A TLS-terminating recording proxy (it
presents certificates from the federation's test CA) sits on every connection that leaves a site:
between the SuperNodes and the SuperLink, and between the caller and each site's routing service.
The session's federation of each mode (2 rounds, the coordinator restarted between them, and their
releases) and routed queries cross them. No canary, and no 12-byte window of
any passage's text, appears in the recorded plaintext; the coordinator's log, the registry and the
sites' egress logs are checked too.

The test of the test: a site that leaks one passage through an allowed-looking field (its text
packed into a float32 tensor the wire schema admits: the mixture, or a factor) is caught by the
same check.
"""

from concurrent import futures

import grpc
import numpy as np
import pytest

from fedprag.client.routing_service import FactorRouter, RoutingCounters, RoutingServicer, SiteRouter
from fedprag.client.store import SiteStore
from fedprag.cluster.serving.fanout import RemoteSite
from fedprag.coordinator.registry import PoolRegistry
from fedprag.shared.lora.layers import attach_lora
from fedprag.shared.models.loading import load_causal_lm
from fedprag.shared.proto import routing_pb2_grpc
from fedprag.shared.retrieval.encoder import SentenceEncoder
from fedprag.shared.wire import MIXTURE, FactorReply, RoutingReply
from tests.integration.wire_recorder import RecordingProxy

pytestmark = pytest.mark.integration

WINDOW = 12


def leaked(wire: bytes, texts: list[str]) -> set[bytes]:
    """Every ``WINDOW``-byte window of any text that occurs in ``wire`` (a round's wire is tens of
    megabytes: every window is keyed at once, the keys looked up in bulk, and hits compared byte for byte)."""
    windows = {t.encode()[i:i + WINDOW] for t in texts for i in range(len(t.encode()) - WINDOW + 1)}
    if len(wire) < WINDOW or not windows:
        return set()
    wanted = np.unique(_window_keys(b"".join(windows))[::WINDOW])
    keys = _window_keys(wire)
    hits = np.flatnonzero(wanted[np.searchsorted(wanted, keys).clip(max=len(wanted) - 1)] == keys)
    return {wire[i:i + WINDOW] for i in hits.tolist() if wire[i:i + WINDOW] in windows}


def _window_keys(data: bytes) -> np.ndarray:
    """A 64-bit key of every ``WINDOW``-byte window of ``data`` (its first 8 bytes mixed with its last
    4), one per start offset; equal windows have equal keys."""
    count = len(data) - WINDOW + 1
    head = np.ndarray((count,), dtype="<u8", buffer=data, strides=(1,))
    tail = np.ndarray((count,), dtype="<u4", buffer=data, offset=WINDOW - 4, strides=(1,))
    return head ^ (tail.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))


def _packed(store, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """The bytes of a site's first passage as float32 values (finite ones, as the schema demands):
    one row, or padded with spaces to ``shape`` (a tensor the receiver would accept)."""
    text = store.passages()[0].text.encode()
    size = 4 * int(np.prod(shape)) if shape else len(text) + (-len(text) % 4)
    return np.frombuffer(text.ljust(size), dtype="<f4").reshape(shape or (1, -1)).astype(np.float32)


class _LeakingRouter(SiteRouter):
    """A broken site: its mixture tensor carries the bytes of its first passage's text."""

    def route(self, query_embeddings, k, score_temperature, noise=0.0):
        return [RoutingReply(site=r.site, version=r.version, scores=r.scores,
                             mixture={MIXTURE: _packed(self.store)})
                for r in super().route(query_embeddings, k, score_temperature)]


class _LeakingFactorRouter(FactorRouter):
    """A broken site in distilled mode: one factor tensor, of the shape the query API expects,
    carries the bytes of its first passage's text."""

    def route(self, query_embeddings, k, score_temperature, noise=0.0):
        replies = super().route(query_embeddings, k, score_temperature)
        key = next(k for k in replies[0].factors if k.endswith("lora_B"))
        return [FactorReply(site=r.site, version=r.version, lengths=r.lengths, scores=r.scores,
                            factors={**r.factors, key: _packed(self.store, r.factors[key].shape)}) for r in replies]


def _routed(deployment, name, port, embeddings):
    certs = deployment.certs / "routing"
    with RecordingProxy(int(port), certs / f"{name}.pem", certs / f"{name}.key", deployment.tls.ca_cert) as proxy:
        site = RemoteSite(name, f"127.0.0.1:{proxy.port}", deployment.tls.ca_cert, deployment.token)
        replies = site.route(embeddings, 3, 0.05)
    assert len(replies) == len(embeddings)
    return proxy.plaintext()


@pytest.fixture(scope="module", params=[pytest.param(mode, marks=pytest.mark.uses(f"{mode}_federation"))
                                              for mode in ("poly", "distilled")])
def run(request):
    """The session's federation of each mode, whose rounds and releases crossed a recording proxy,
    then routed queries through a recording proxy to each site, and a leaking site's reply."""
    federation = request.getfixturevalue(f"{request.param}_federation")
    deployment = federation.deployment
    encoder = SentenceEncoder()
    questions = encoder.embed([q.text for q in federation.dataset.questions[:48]])
    routing = [_routed(deployment, site.name, site.address.rsplit(":", 1)[1], questions)
               for site in deployment.routing_sites()]
    leaking = _leaking_site(deployment, federation.stores[0], encoder, questions, request.param)
    return {"federation": federation, "superlink": deployment.proxy.plaintext(), "routing": routing,
            "leaking": leaking}


def _leaking_site(deployment, store, encoder, questions, mode):
    """What crosses from a leaking routing service (real gRPC, TLS, the site's certificate)."""
    base = load_causal_lm(deployment.model_spec)
    if mode == "poly":
        pool, _, version = SiteStore(store.root).pool(base.digest)
        router = _LeakingRouter(SiteStore(store.root), encoder, base.digest, pool, version)
    else:
        generator, version = SiteStore(store.root).generator(base, attach_lora(base.model))
        router = _LeakingFactorRouter(SiteStore(store.root), encoder, generator, version)
    certs = deployment.certs / "routing"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    routing_pb2_grpc.add_SiteRoutingServicer_to_server(RoutingServicer(lambda: router, [deployment.token],
                                                                       RoutingCounters()), server)
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials(
        [((certs / f"{store.root.name}.key").read_bytes(), (certs / f"{store.root.name}.pem").read_bytes())]))
    server.start()
    try:
        return _routed(deployment, store.root.name, port, questions[:1])
    finally:
        server.stop(0)


def test_the_rounds_releases_and_queries_crossed_the_proxies(run):
    rounds = run["federation"].rounds
    assert [r.version for r in rounds] == [1, 2] and all(len(r.accepted) == 3 for r in rounds)
    assert len(run["superlink"]) > 2 * sum(max(r.bytes_per_site.values()) for r in rounds)  # pool out, updates back
    assert all(len(wire) > 48 * 384 * 4 for wire in run["routing"])  # every site got the embeddings


def test_no_canary_and_no_12_byte_window_of_passage_text_crosses_any_connection(run):
    for wire in [run["superlink"], *run["routing"]]:
        assert not [c for c in run["federation"].canaries if c.encode() in wire]
        assert leaked(wire, run["federation"].texts) == set()


def test_nor_is_any_canary_in_the_coordinators_log_registry_or_the_sites_egress_logs(run):
    work = run["federation"].work
    files = [work / "logs" / "superlink.log", *PoolRegistry(work / "registry", "").root.rglob("*"),
             *(s.root / "egress" / f"{s.state.site_id}.bin" for s in run["federation"].stores)]
    blobs = [f.read_bytes() for f in files if f.is_file()]
    assert len(blobs) > 5
    assert not [c for c in run["federation"].canaries for blob in blobs if c.encode() in blob]


def test_a_site_leaking_a_passage_through_an_allowed_field_is_caught(run):
    caught = leaked(run["leaking"], run["federation"].texts)
    assert len(caught) > 10  # the check sees the leak...
    assert any(c.encode() in run["leaking"] for c in run["federation"].canaries)  # ...and the canary in it
