"""The query API and the serving actor group on Ray Serve, over real HTTP and gRPC on loopback.

The federation is the session's Poly-PRAG one (``poly_federation``): a coordinator and 3 site
daemons (processes, TLS, node auth) that trained a last-layer pool for 2 rounds; every passage
carries a planted canary. The serving application
(the ingress, and 2 replicas that route and answer) runs on the test session's Ray, and reaches the sites
through recording TLS proxies, so the test sees every byte that crosses a site boundary at query
time. Tests that stop things (a site, a replica) and publish a new pool run last; a stopped
site is started again before its test returns.
"""

import json
import secrets
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import grpc
import httpx
import numpy as np
import openai
import pytest
import ray
from ray import serve

from fedprag.client.admin import admin_address, daemon_status
from fedprag.client.app import forward
from fedprag.cluster.serving.app import APP_NAME, build_app, start
from fedprag.coordinator.registry import PoolRegistry, registry_dir
from fedprag.shared.config import load_config
from fedprag.shared.methods.poly.serializer import pool_arrays, router_arrays
from fedprag.shared.metrics import exact_match
from fedprag.shared.models.loading import load_causal_lm
from fedprag.shared.processes import free_port
from fedprag.shared.proto import routing_pb2, routing_pb2_grpc
from fedprag.shared.wire import PoolRelease
from tests.integration.federation_support import LAST_LAYER
from tests.integration.wire_recorder import RecordingProxy

pytestmark = pytest.mark.integration

KEY, OTHER_KEY = "test-key-" + secrets.token_hex(8), "other-key-" + secrets.token_hex(8)
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def federation(poly_federation):
    """The session's Poly-PRAG federation."""
    return poly_federation


@pytest.fixture(scope="module")
def api(federation, ray_session):
    deployment = federation.deployment
    proxies = []
    for site in deployment.routing_sites():
        certs = deployment.certs / "routing"
        proxy = RecordingProxy(int(site.address.rsplit(":", 1)[1]), certs / f"{site.name}.pem",
                               certs / f"{site.name}.key", deployment.tls.ca_cert).__enter__()
        proxies.append((site.name, proxy))
        site.close()
    settings = {f"serve.{field}": value for field, value in deployment.serve_settings().items()}
    settings["serve.sites"] = [f"{name}=127.0.0.1:{proxy.port}" for name, proxy in proxies]  # through the recorders
    config = load_config(LAST_LAYER, {
        **settings, "federation.work_dir": str(federation.work), "serve.api_keys": f"{KEY},{OTHER_KEY}",
        "serve.port": free_port(), "serve.grpc_port": free_port(), "serve.plaintext": True, "serve.replicas": 2, "serve.replica_cpus": 0.5,
        "serve.rate_limit_qps": 200, "serve.rate_limit_burst": 400, "serve.key_rate_limits": f"{OTHER_KEY}=2"})
    endpoints = start(config)
    yield {"url": endpoints.http, "grpc": endpoints.grpc, "proxies": proxies, "config": config}
    serve.shutdown()
    for _, proxy in proxies:
        proxy.__exit__(None, None, None)


def _single_hop(federation, count):
    questions = [q for q in federation.dataset.questions if q.kind == "single"]
    return questions[:count]


def _ask_all(url, questions, key=KEY, concurrency=8, **options):
    def ask(question):
        try:
            reply = httpx.post(f"{url}/v1/query", json={"question": question.text, **options},
                               headers={"Authorization": f"Bearer {key}"}, timeout=60)
        except httpx.HTTPError as exc:
            return {"status": type(exc).__name__}
        return {"status": reply.status_code, **(reply.json() if reply.status_code == 200 else {})}

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(ask, questions))


def test_a_stock_openai_client_gets_the_right_answers(api, federation):
    client = openai.OpenAI(base_url=f"{api['url']}/v1", api_key=KEY, max_retries=0)
    questions = _single_hop(federation, 12)
    correct = []
    for question in questions:
        reply = client.chat.completions.create(model="fedprag", messages=[
            {"role": "system", "content": "Answer briefly."}, {"role": "user", "content": question.text}])
        assert reply.model == "fedprag@2" and reply.usage.completion_tokens > 0
        correct.append(exact_match(reply.choices[0].message.content, question.answers))
    print(f"\nopenai client, chat completions: exact match {np.mean(correct):.2f} on {len(questions)} questions")
    assert np.mean(correct) >= 0.75
    assert [m.id for m in client.models.list().data] == ["fedprag", "fedprag@0", "fedprag@1", "fedprag@2"]
    completion = client.completions.create(model="fedprag@2", prompt=questions[0].text)
    assert exact_match(completion.choices[0].text, questions[0].answers) == correct[0]


def test_a_query_reply_carries_its_trace(api, federation):
    question = _single_hop(federation, 1)[0]
    reply = httpx.post(f"{api['url']}/v1/query", json={"question": question.text, "top_k": 2}, headers=AUTH,
                       timeout=60).json()
    trace = reply["trace"]
    assert reply["pool_version"] == 2 and trace["routing"] == "fanout"
    assert sorted(trace["sites_asked"]) == sorted(trace["sites_answered"]) and len(trace["sites_asked"]) == 3
    weights = [e["weight"] for e in trace["experts"]]
    assert 0 < len(weights) <= 16 and weights == sorted(weights, reverse=True) and 0 < sum(weights) <= 1 + 1e-4
    assert set(trace["timings_ms"]) == {"route", "generate", "total"} and trace["batch_size"] >= 1
    closed = httpx.post(f"{api['url']}/v1/query", json={"question": question.text, "method": "closed_book"},
                        headers=AUTH, timeout=60).json()
    assert closed["trace"]["routing"] == "none" and closed["trace"]["sites_asked"] == [] and closed["answer"]
    assert httpx.get(f"{api['url']}/healthz").json()["pool_version"] == 2
    metrics = httpx.get(f"{api['url']}/metrics").text
    assert 'fedprag_requests_total{endpoint="/v1/query",status="200"}' in metrics
    assert "fedprag_batch_size_bucket" in metrics and "fedprag_pool_version 2.0" in metrics


def test_concurrent_requests_share_forward_passes(api, federation):
    replies = _ask_all(api["url"], _single_hop(federation, 48), concurrency=24)
    assert all(r["status"] == 200 for r in replies)
    sizes = [r["trace"]["batch_size"] for r in replies]
    print(f"\n48 requests at concurrency 24: batch sizes {sorted(sizes)}")
    assert max(sizes) > 1


def test_the_grpc_query_service_answers_like_http(api, federation):
    question = _single_hop(federation, 1)[0]
    with grpc.insecure_channel(api["grpc"]) as channel:
        stub = routing_pb2_grpc.FedpragQueryStub(channel)
        reply = stub.Ask(routing_pb2.QueryRequest(question=question.text), timeout=60,
                         metadata=(("application", "fedprag"), ("authorization", f"Bearer {KEY}")))
        assert reply.pool_version == 2 and len(reply.sites_answered) == 3 and reply.answer
        with pytest.raises(grpc.RpcError) as refused:
            stub.Ask(routing_pb2.QueryRequest(question=question.text), timeout=60,
                     metadata=(("application", "fedprag"), ("authorization", "Bearer wrong")))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_bad_requests_are_refused_with_the_status_a_client_expects(api):
    url = api["url"]
    question = {"question": "Where was Kara Lovel born?"}
    assert httpx.post(f"{url}/v1/query", json=question).status_code == 401
    assert httpx.post(f"{url}/v1/query", json=question, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert httpx.post(f"{url}/v1/query", content=b"{" + b" " * 70_000, headers=AUTH).status_code == 413
    missing = httpx.post(f"{url}/v1/query", json={"top_k": 3}, headers=AUTH)
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["body", "question"]
    assert httpx.post(f"{url}/v1/query", content=b"{not json", headers=AUTH).status_code == 422
    assert httpx.post(f"{url}/v1/query", content=b"\xff\xfe\x00", headers=AUTH).status_code == 422  # not UTF-8
    surrogate = httpx.post(f"{url}/v1/query", content=b'{"question": "\\ud800 born?"}', headers=AUTH)
    assert surrogate.status_code == 422 and surrogate.json()["detail"][0]["loc"][0] == "body"
    bad_k = httpx.post(f"{url}/v1/query", json={**question, "top_k": 0}, headers=AUTH)
    assert bad_k.status_code == 422 and bad_k.json()["detail"][0]["loc"] == ["body", "top_k"]
    long = httpx.post(f"{url}/v1/query", json={"question": "ŋ" * 1900}, headers=AUTH, timeout=60)
    assert long.status_code == 422 and long.json()["detail"][0]["loc"] == ["body", "question"]
    assert httpx.post(f"{url}/v1/query", json={**question, "model": "fedprag@1"}, headers=AUTH,
                      timeout=60).status_code == 404  # the sites route with version 2 only
    assert httpx.post(f"{url}/v1/chat/completions", json={"model": "gpt-4", "messages": [
        {"role": "user", "content": "hi"}]}, headers=AUTH).status_code == 422
    with ThreadPoolExecutor(8) as pool:  # the other key's own rate: 2/s, burst 4 (far below what any machine serves)
        codes = list(pool.map(lambda _: httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {OTHER_KEY}"},
                                                  timeout=60).status_code, range(200)))
    assert 429 in codes and set(codes) <= {200, 429}
    assert httpx.get(f"{url}/v1/models", headers=AUTH).status_code == 200  # keys do not share a bucket


CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def test_schemathesis_finds_no_server_error_in_1000_generated_requests(api, tmp_path):
    report = tmp_path / "report"
    result = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", f"{api['url']}/openapi.json", "--max-examples", "250",
         "--checks", CHECKS, "--header", f"Authorization: Bearer {KEY}", "--seed", "7",
         "--report", "har", "--report-dir", str(report), "--suppress-health-check", "all",
         "--request-timeout", "60", "--workers", "1"],  # one thread: CPython 3.11.7's ast.parse is not
        # thread-safe (gh-106905), and Hypothesis parses its lambdas' source while it builds strategies
        check=False, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    print(result.stdout[-3000:])
    calls = sum(len(json.loads(har.read_text())["log"]["entries"]) for har in report.glob("har-*.json"))
    print(f"schemathesis: {calls} requests")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert calls >= 1000


def test_no_canary_byte_crosses_a_site_connection_at_query_time(api, federation):
    crossed = b"".join(proxy.plaintext() for _, proxy in api["proxies"])
    assert len(crossed) > 100_000  # every routing request and reply above went through the proxies
    for canary in federation.canaries:
        assert canary.encode() not in crossed
    for text in federation.texts:
        raw = text.encode()
        windows = {raw[i:i + 12] for i in range(0, len(raw) - 12, 4)}
        assert not any(w in crossed for w in windows)


def test_a_stopped_site_is_named_and_answers_keep_coming(api, federation):
    deployment = federation.deployment
    name, started = next(iter(deployment.daemons.items()))
    started.process.send_signal(signal.SIGTERM)
    try:
        assert started.process.wait(timeout=60) == 0
        replies = _ask_all(api["url"], _single_hop(federation, 16))
        assert all(r["status"] == 200 for r in replies)
        assert all(name in r["trace"]["sites_failed"] and name not in r["trace"]["sites_answered"] for r in replies)
    finally:
        deployment.revive()  # the session's federation, as it was (the API's proxy still points at the old port)


def test_the_learned_central_router_answers_with_no_site_asked(api, federation):
    questions = _single_hop(federation, 48)
    replies = _ask_all(api["url"], questions, routing="router")
    assert all(r["status"] == 200 for r in replies)
    assert all(r["trace"]["sites_asked"] == [] and r["pool_version"] == 2 for r in replies)
    em = np.mean([exact_match(r["answer"], q.answers) for r, q in zip(replies, questions)])
    print(f"\nlearned central router (federated, no site online needed): exact match {em:.2f} on {len(questions)}")
    assert em >= 0.55  # closed-book is about 0.04 on these questions; fan-out 1.00


def _load(url, questions, seconds, results, stop):
    """A bounded load: 4 clients asking in turn until ``stop``; each records (status, pool version)."""
    def client(offset):
        seen = []
        i = offset
        while not stop.is_set():
            question = questions[i % len(questions)]
            i += 4
            try:
                reply = httpx.post(f"{url}/v1/query", json={"question": question.text}, headers=AUTH, timeout=60)
                seen.append((reply.status_code, reply.json().get("pool_version") if reply.status_code == 200 else None))
            except httpx.HTTPError as exc:
                seen.append((type(exc).__name__, None))
        results.append(seen)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    return threads


def test_killing_a_generator_replica_under_load_fails_no_request(api, federation):
    results, stop = [], threading.Event()
    threads = _load(api["url"], _single_hop(federation, 40), 0, results, stop)
    time.sleep(3)
    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True) if "Replica" in a["name"]]
    assert len(replicas) == 2
    ray.kill(ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]), no_restart=True)
    time.sleep(8)
    stop.set()
    for t in threads:
        t.join(120)
    statuses = [s for seen in results for s, _ in seen]
    retries = _metric(api["url"], "fedprag_replica_retries_total")
    print(f"\nreplica killed under load: {len(statuses)} requests, {sum(s != 200 for s in statuses)} failed, "
          f"{retries:.0f} retried on another replica")
    assert statuses and all(s == 200 for s in statuses)


def _metric(url, name):
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_a_pool_published_under_load_is_picked_up_and_versions_never_go_backwards(api, federation):
    config, deployment = federation.config, federation.deployment
    base = load_causal_lm("tiny")
    registry = PoolRegistry(registry_dir(config.federation), base.digest)
    pool, _ = registry.latest()
    results, stop = [], threading.Event()
    threads = _load(api["url"], _single_hop(federation, 40), 0, results, stop)
    time.sleep(2)
    version = registry.publish(pool, config.poly, 3, {})
    router = registry.router(2)
    registry.save_router(version, router)
    release = PoolRelease(version=version, experts=pool_arrays(pool), settings=config.poly.to_numbers(),
                          router=router_arrays(router))
    for name, path in deployment.sites:  # what the coordinator's release does, site by site
        if name in deployment.daemons and deployment.daemons[name].process.poll() is None:
            forward(admin_address(path), release)
            assert daemon_status(path).pool_version == version
    time.sleep(4)
    stop.set()
    for t in threads:
        t.join(120)
    for seen in results:
        assert all(status == 200 for status, _ in seen), seen
        versions = [v for _, v in seen]
        assert versions == sorted(versions) and versions[-1] == version, versions
    print(f"\npool published under load: {sum(len(s) for s in results)} requests, 0 failed, versions "
          f"{sorted({v for s in results for _, v in s})}, never backwards")
    assert json.loads(httpx.get(f"{api['url']}/healthz").text)["pool_version"] == version


def _replicas() -> int:
    states = serve.status().applications[APP_NAME].deployments["Replica"].replica_states
    return states.get("RUNNING", 0)


def test_the_replica_group_scales_out_under_load(api, federation):
    """With autoscaling bounds (1 to 3), a sustained load above the target adds replicas."""
    settings = replace(api["config"].serve, replicas=1, min_replicas=1, max_replicas=3, target_ongoing_requests=2,
                       upscale_delay_s=2.0, look_back_period_s=3.0)
    serve.run(build_app(replace(api["config"], serve=settings)), name=APP_NAME, route_prefix="/")
    deadline = time.monotonic() + 60
    while _replicas() != 1 and time.monotonic() < deadline:
        time.sleep(1)
    assert _replicas() == 1
    results, stop = [], threading.Event()
    threads = [t for _ in range(3) for t in _load(api["url"], _single_hop(federation, 40), 0, results, stop)]
    seen = 1
    while seen < 2 and time.monotonic() < deadline + 60:
        time.sleep(2)
        seen = max(seen, _replicas())
    stop.set()
    for t in threads:
        t.join(120)
    statuses = [s for client in results for s, _ in client]
    print(f"\nautoscaling: 1 → {seen} replicas under 12 clients; {len(statuses)} requests, "
          f"{sum(s != 200 for s in statuses)} failed")
    assert seen >= 2 and statuses and all(s == 200 for s in statuses)
