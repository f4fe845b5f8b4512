"""What leaves a site, read on the wire, in a real federated run followed by routed queries, in both modes.

In Poly-PRAG mode a round carries the expert pool and the replies carry expert mixtures; in
distilled mode a round carries the generator and the replies carry the LoRA factors each site's
generator made from its passages. Random canary strings are planted in the sites' passages. A TLS-terminating recording proxy (it
presents certificates from the federation's test CA) sits on every connection that leaves a site:
between the SuperNodes and the SuperLink, and between the caller and each site's routing service.
One round, the pool release and routed queries cross them. No canary, and no 12-byte window of
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
from fedprag.cluster.deployment import LocalDeployment
from fedprag.cluster.serving.fanout import RemoteSite
from fedprag.cluster.simulation import prepare_sites
from fedprag.coordinator.registry import PoolRegistry
from fedprag.shared.config import load_config
from fedprag.shared.data.benchmark import BenchmarkSpec, make_benchmark
from fedprag.shared.lora.layers import attach_lora
from fedprag.shared.models.loading import load_causal_lm
from fedprag.shared.proto import routing_pb2_grpc
from fedprag.shared.retrieval.encoder import SentenceEncoder
from fedprag.shared.wire import MIXTURE, FactorReply, RoutingReply
from tests.integration.federation_support import with_unique_canaries
from tests.integration.wire_recorder import RecordingProxy

pytestmark = pytest.mark.integration

WINDOW = 12


def leaked(wire: bytes, texts: list[str]) -> set[bytes]:
    """Every ``WINDOW``-byte window of any text that occurs in ``wire``."""
    windows = {t.encode()[i:i + WINDOW] for t in texts for i in range(len(t.encode()) - WINDOW + 1)}
    return {wire[i:i + WINDOW] for i in range(len(wire) - WINDOW + 1) if wire[i:i + WINDOW] in windows}


class _RecordedDeployment(LocalDeployment):
    """A deployment whose SuperNodes reach the SuperLink through a recording proxy."""

    proxy: RecordingProxy | None = None

    def superlink_address(self) -> str:
        if self.proxy is None:
            self.proxy = RecordingProxy(self.port, self.tls.server_cert, self.tls.server_key, self.tls.ca_cert)
            self.proxy.__enter__()
        return f"127.0.0.1:{self.proxy.port}"

    def stop(self) -> None:
        super().stop()
        if self.proxy is not None:
            self.proxy.__exit__(None, None, None)


def _packed(store, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """The bytes of a site's first passage as float32 values (finite ones, as the schema demands):
    one row, or padded with spaces to ``shape`` (a tensor the receiver would accept)."""
    text = store.passages()[0].text.encode()
    size = 4 * int(np.prod(shape)) if shape else len(text) + (-len(text) % 4)
    return np.frombuffer(text.ljust(size), dtype="<f4").reshape(shape or (1, -1)).astype(np.float32)


class _LeakingRouter(SiteRouter):
    """A broken site: its mixture tensor carries the bytes of its first passage's text."""

    def route(self, query_embeddings, k, score_temperature, noise=0.0):
        return [RoutingReply(site=r.site, pool_version=r.pool_version, scores=r.scores,
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


DISTILLED = {"distilled.start": "scratch", "distilled.local_steps": 2, "distilled.batch_size": 4,
             "distilled.width": 32, "distilled.heads": 2, "distilled.depth": 1}
"""A small generator trained from scratch: what crosses is the point here, not how well it answers."""


@pytest.fixture(scope="module", params=["poly", "distilled"])
def run(request, small_model_spec, tmp_path_factory):
    mode = request.param
    work = tmp_path_factory.mktemp(f"wire-{mode}")
    dataset = make_benchmark(BenchmarkSpec(people=12, sites=3, alpha=100.0, seed=4))
    planted, canaries = with_unique_canaries(dataset)
    stores = prepare_sites(planted, work / "sites")
    config = load_config(None, {"federation.rounds": 1, "federation.local_epochs": 1, "federation.min_sites": 3,
                                "federation.mode": mode, **(DISTILLED if mode == "distilled" else {})})
    encoder = SentenceEncoder()
    questions = encoder.embed([q.text for q in dataset.questions[:48]])
    with _RecordedDeployment(work, [(s.root.name, s.root) for s in stores], small_model_spec, mode=mode) as deployment:
        rounds = deployment.run(config)
        routing = [_routed(deployment, name, site.address.rsplit(":", 1)[1], questions)
                   for name, site in zip([s.root.name for s in stores], deployment.routing_sites())]
        leaking = _leaking_site(deployment, stores[0], small_model_spec, encoder, questions, mode)
    return {"work": work, "stores": stores, "canaries": canaries, "rounds": rounds,
            "superlink": deployment.proxy.plaintext(), "routing": routing, "leaking": leaking,
            "texts": [p.text for p in planted.passages]}


def _leaking_site(deployment, store, spec, encoder, questions, mode):
    """What crosses from a leaking routing service (real gRPC, TLS, the site's certificate)."""
    base = load_causal_lm(spec)
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


def test_the_round_release_and_queries_crossed_the_proxies(run):
    assert run["rounds"][-1].version == 1 and len(run["rounds"][-1].accepted) == 3
    assert len(run["superlink"]) > 2 * max(run["rounds"][-1].bytes_per_site.values())  # pool out, updates back
    assert all(len(wire) > 48 * 384 * 4 for wire in run["routing"])  # every site got the embeddings


def test_no_canary_and_no_12_byte_window_of_passage_text_crosses_any_connection(run):
    for wire in [run["superlink"], *run["routing"]]:
        assert not [c for c in run["canaries"] if c.encode() in wire]
        assert leaked(wire, run["texts"]) == set()


def test_nor_is_any_canary_in_the_coordinators_log_registry_or_the_sites_egress_logs(run):
    work = run["work"]
    files = [work / "logs" / "superlink.log", *PoolRegistry(work / "registry", "").root.rglob("*"),
             *(s.root / "egress" / f"{s.state.site_id}.bin" for s in run["stores"])]
    blobs = [f.read_bytes() for f in files if f.is_file()]
    assert len(blobs) > 5
    assert not [c for c in run["canaries"] for blob in blobs if c.encode() in blob]


def test_a_site_leaking_a_passage_through_an_allowed_field_is_caught(run):
    caught = leaked(run["leaking"], run["texts"])
    assert len(caught) > 10  # the check sees the leak...
    assert any(c.encode() in run["leaking"] for c in run["canaries"])  # ...and the canary in it
