"""Distilled mode end to end, over the deployment runtime.

The federation is the session's DistilledPRAG one (``distilled_federation``): a coordinator
(SuperLink) and 3 site daemons, each with its SuperNode, on loopback with TLS and node
authentication, ran 2 rounds in which every site distilled the generator on its own documents
(teacher and student both at the site) and sends back only the generator; the coordinator
averaged them, was restarted between the rounds (it resumed from its registry), and released the
last. One person of the benchmark is held out of every site. Their
passage then lands, text only, in site 0's inbox, and questions about them are asked as the query
API asks them: embeddings over gRPC to every daemon, each answering with the LoRA its generator made
from its best passage, the LoRAs of the sites holding the global top passage combined, one
generate; then over HTTP through the serving group. No new round runs.

The rounds start from the pretrained generator that ships with the built-in model.
"""

import json
import os
import time

import httpx
import numpy as np
import pytest
from ray import serve

from fedprag.client.admin import daemon_status
from fedprag.cluster.serving.app import start
from fedprag.cluster.serving.fanout import FanOut
from fedprag.cluster.serving.modes import serving_mode
from fedprag.coordinator.app import recorded_rounds
from fedprag.coordinator.registry import GeneratorRegistry, registry_dir
from fedprag.shared.config import load_config
from fedprag.shared.methods.distilled.model import DistilledModel
from fedprag.shared.metrics import exact_match
from fedprag.shared.models.loading import load_causal_lm
from fedprag.shared.processes import free_port
from fedprag.shared.query import QueryEngine
from fedprag.shared.retrieval.encoder import SentenceEncoder
from tests.integration.federation_support import DISTILLED

pytestmark = pytest.mark.integration

KEY = "distilled-test-key"


@pytest.fixture(scope="module")
def federation(distilled_federation):
    """The session's DistilledPRAG federation."""
    return distilled_federation


@pytest.fixture(scope="module")
def ask(federation):
    """What the query API does in distilled mode: fan out, combine the sites' LoRAs, one generate (top passage)."""
    base = load_causal_lm("tiny")
    encoder = SentenceEncoder()
    fanout = FanOut(federation.deployment.routing_sites(), 1, federation.config.poly, serving_mode("distilled"))
    engine = QueryEngine(base)
    mask = GeneratorRegistry(registry_dir(federation.config.federation), base.digest).mask_vector()
    model = DistilledModel.served(base, mask)

    def answers(questions):
        routings = fanout.routings(encoder.embed([q.text for q in questions]))
        return [exact_match(a, q.answers) for a, q in zip(engine.answer(model, [q.text for q in questions], routings),
                                                          questions)]
    yield answers
    fanout.close()


def _questions_about(dataset, passage):
    return [q for q in dataset.questions if q.kind == "single" and q.gold_passage_ids == [passage.passage_id]]


def test_every_site_distilled_in_both_rounds_and_serves_the_released_generator(federation):
    rounds = federation.rounds
    assert [len(r.accepted) for r in rounds] == [3, 3] and [r.version for r in rounds] == [1, 2]
    assert all(r.loss is not None and r.loss > 0 for r in rounds)
    for store in federation.stores:
        status = daemon_status(store.root)
        assert status.supernode_connected and list(status.rounds_joined) == [1, 2] and status.serving
        assert status.pool_version == 2 and status.pending == 0 and status.encoded == status.passages > 0


def test_a_document_dropped_in_the_inbox_is_answered_through_the_routing_path_without_a_round(federation, ask):
    site, new, dataset = federation.stores[0].root, federation.new, federation.dataset
    questions = _questions_about(dataset, new)
    before = ask(questions)
    staged = site / "new-document.tmp"
    staged.write_text(json.dumps({"id": new.passage_id, "text": new.text}) + "\n")  # the text alone, no QA pairs
    started = time.monotonic()
    os.replace(staged, site / "inbox" / "new-document.jsonl")
    while (status := daemon_status(site)).inbox_accepted < 1 or status.encoded < status.passages:
        assert time.monotonic() - started < 30, status
        time.sleep(0.2)
    after = ask(questions)
    elapsed = time.monotonic() - started
    print(f"\ninbox → answered: {elapsed:.1f} s; exact match on the new person's {len(questions)} single-hop "
          f"questions {np.mean(before):.2f} before, {np.mean(after):.2f} after")
    assert np.mean(after) >= np.mean(before) + 0.3, (before, after)
    assert len(recorded_rounds(registry_dir(federation.config.federation))) == 2  # no new round


def test_the_query_api_serves_distilled_mode_over_http(federation, ray_session):
    deployment = federation.deployment
    settings = {f"serve.{field}": value for field, value in deployment.serve_settings().items()}
    config = load_config(None, {**DISTILLED, **settings, "federation.work_dir": str(federation.work),
                                "serve.api_keys": KEY, "serve.port": free_port(), "serve.grpc_port": 0,
                                "serve.replicas": 1, "serve.replica_cpus": 0.5})
    endpoints = start(config)
    try:
        questions = [q for q in federation.dataset.questions if q.kind == "single"][:12]
        replies = [httpx.post(f"{endpoints.http}/v1/query", json={"question": q.text, "top_k": 1},
                              headers={"Authorization": f"Bearer {KEY}"}, timeout=60) for q in questions]
        assert [r.status_code for r in replies] == [200] * len(questions), replies[0].text
        bodies = [r.json() for r in replies]
        assert all(b["pool_version"] == 2 and b["trace"]["routing"] == "fanout" and len(b["trace"]["sites_answered"]) == 3
                   for b in bodies)
        em = np.mean([exact_match(b["answer"], q.answers) for b, q in zip(bodies, questions)])
        closed = [httpx.post(f"{endpoints.http}/v1/query", json={"question": q.text, "method": "closed_book"},
                             headers={"Authorization": f"Bearer {KEY}"}, timeout=60).json() for q in questions]
        closed_em = np.mean([exact_match(b["answer"], q.answers) for b, q in zip(closed, questions)])
        several = [httpx.post(f"{endpoints.http}/v1/query", json={"question": q.text, "top_k": 3},
                              headers={"Authorization": f"Bearer {KEY}"}, timeout=60) for q in questions]
        assert [r.status_code for r in several] == [200] * len(questions), several[0].text
        em_top3 = np.mean([exact_match(r.json()["answer"], q.answers) for r, q in zip(several, questions)])
        print(f"\nover HTTP, distilled mode: exact match {em:.2f} with each query's top passage, {em_top3:.2f} with "
              f"its top 3 (the LoRAs of the sites holding them, weighed by score), closed-book {closed_em:.2f}")
        assert em > closed_em and em_top3 > closed_em
        wrong = httpx.post(f"{endpoints.http}/v1/query", json={"question": "Who?", "method": "poly"},
                           headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
        assert wrong.status_code == 422 and "distilled" in wrong.text
    finally:
        serve.shutdown()
