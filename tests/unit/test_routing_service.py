"""A site's routing replies carry ids fresh for each query, keyed by a secret that never leaves the site."""

import re
import stat

import numpy as np
import pytest
import torch

from fedprag.client.routing_service import SiteRouter
from fedprag.client.store import SECRET, SiteStore
from fedprag.shared.limits import RateLimiter
from fedprag.shared.methods.poly.layers import ExpertPool, RoutingTable
from fedprag.shared.retrieval.encoder import SentenceEncoder
from fedprag.shared.wire import MIXTURE, record_blobs

TEXTS = ["Kara Lovel came into the world in 1873.", "Lo Fenwick plays the harp.", "Mi Quessa works as a baker.",
         "Ze Garsk draws a salary from Brandor Mills."]


def _encoded_site(tmp_path):
    """A store whose passages all have routing rows for a 4-expert pool; its router and encoder."""
    store = SiteStore(tmp_path / "site", site_id="site-a")
    store.add_passages([(f"own-passage-{i}", t) for i, t in enumerate(TEXTS)])
    pool = ExpertPool({"layers.0.mlp.down_proj": (torch.zeros(4, 1, 6), torch.zeros(4, 5, 1))}, scale=1.0)
    ids = [p.passage_id for p in store.passages()]
    store.save_routing(RoutingTable(ids, torch.randn(len(ids), 1, 4)), pool, 1, "d" * 64)
    encoder = SentenceEncoder()
    return store, pool, encoder, SiteRouter(store, encoder, "d" * 64, pool)


def test_reply_ids_are_fresh_per_query_and_no_text_or_secret_is_in_the_reply(tmp_path):
    store, pool, encoder, router = _encoded_site(tmp_path)
    query = encoder.embed(["Who plays the harp?"])
    first, second = router.route(np.concatenate([query, query]), k=3, score_temperature=0.05)
    assert list(first.scores.values()) == list(second.scores.values())  # same hits, same order
    assert not set(first.scores) & set(second.scores)  # unlinkable ids
    assert all(re.fullmatch(r"x[0-9a-f]{16}", i) for i in [*first.scores, *second.scores])
    assert stat.S_IMODE((store.root / SECRET).stat().st_mode) == 0o600
    wire = b"".join(record_blobs(first.to_record()))
    assert store.secret() not in wire and not any(t.encode() in wire for t in TEXTS)
    assert b"own-passage" not in wire  # the site's own passage ids stay too
    assert list(first.mixture) == [MIXTURE] and first.mixture[MIXTURE].shape == (1, 4)  # one mixture, no rows
    np.testing.assert_allclose(first.mixture[MIXTURE].sum(-1), 1.0, rtol=1e-5)
    assert SiteRouter(store, encoder, "d" * 64, pool).route(query, 1, 0.05)[0].scores  # the secret persists and reloads


def test_a_caller_gets_its_burst_then_the_refill_rate_and_callers_do_not_share_a_bucket():
    now = [0.0]
    limiter = RateLimiter(per_second=10.0, burst=20, clock=lambda: now[0])
    assert limiter.allow(b"a", 15) and not limiter.allow(b"a", 10) and limiter.allow(b"b", 20)
    now[0] = 0.5  # 5 more for a
    assert limiter.allow(b"a", 10) and not limiter.allow(b"a", 1)
    now[0] = 100.0  # the bucket refills to the burst, not beyond
    assert limiter.allow(b"a", 20) and not limiter.allow(b"a", 1)


def test_reply_noise_hides_exact_scores_and_keeps_a_mixture(tmp_path):
    _, _, encoder, router = _encoded_site(tmp_path)
    query = encoder.embed([TEXTS[1]])
    (exact,) = router.route(query, 2, 0.05)
    noisy = [router.route(query, 2, 0.05, noise=0.05)[0] for _ in range(2)]
    assert max(exact.scores.values()) == pytest.approx(1.0, abs=1e-5)  # the text itself: an exact match shows
    assert all(abs(max(r.scores.values()) - 1.0) > 1e-4 for r in noisy)
    assert not np.allclose(noisy[0].mixture[MIXTURE], noisy[1].mixture[MIXTURE])  # fresh noise per reply
    for reply in noisy:
        assert (reply.mixture[MIXTURE] >= 0).all()
        np.testing.assert_allclose(reply.mixture[MIXTURE].sum(-1), 1.0, rtol=1e-5)
