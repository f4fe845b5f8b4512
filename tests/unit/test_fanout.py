"""The query API's fan-out: each site's blended mixture, weighed by its share of the global top-k.

The sites here are fakes with fixed hits: this tests the blend; the gRPC path to real daemons is
tested in tests/integration/test_site_daemon.py."""

import numpy as np
import pytest
import torch

from fedprag.cluster.serving.fanout import FanOut, SiteUnavailable, blend_replies
from fedprag.cluster.serving.modes import serving_mode
from fedprag.shared.methods.base import Routing
from fedprag.shared.methods.poly.config import PolyConfig
from fedprag.shared.methods.poly.layers import ExpertPool, combine
from fedprag.shared.methods.poly.model import PolyModel
from fedprag.shared.wire import MIXTURE, RoutingReply

K = 4
CONFIG = PolyConfig(n_experts=K, top_m=K, score_temperature=0.1)
POOL = serving_mode("poly")


class _Site:
    """A site with fixed hits, blending them as a SiteRouter does."""

    def __init__(self, name, hits, version=1):
        self.name, self.hits, self.version = name, sorted(hits, key=lambda h: -h[0]), version  # (score, row [1, K])

    def route(self, query_embeddings, k, score_temperature):
        best = self.hits[:k]
        scores = np.array([s for s, _ in best])
        blend = np.exp((scores - scores.max()) / score_temperature)
        mixture = sum(b * w for b, (_, w) in zip(blend, best)) / blend.sum()
        return [RoutingReply(site=self.name, version=self.version, scores={f"x{i}": s for i, (s, _) in enumerate(best)},
                             mixture={MIXTURE: mixture.astype(np.float32)}) for _ in query_embeddings]

    def exact(self, k, config):
        """The reference: the global top-k passages' own rows, blended once (no site sends rows)."""
        hits = sorted(self.hits, key=lambda h: -h[0])[:k]
        rows = torch.from_numpy(np.stack([w for _, w in hits]))
        return combine(rows[None], torch.tensor([[s for s, _ in hits]]), config.top_m, config.score_temperature)[0]


class _Down:
    name = "site-down"

    def route(self, query_embeddings, k, score_temperature):
        raise SiteUnavailable("DEADLINE_EXCEEDED: the site did not answer in time")


def _row(*weights):
    return np.array([weights], dtype=np.float32)


SITES = [_Site("site-a", [(0.9, _row(1, 0, 0, 0)), (0.2, _row(0, 1, 0, 0))]),
         _Site("site-b", [(0.7, _row(0, 0, 1, 0)), (0.6, _row(0, 0, 0, 1))])]


def test_without_passages_outside_the_global_top_k_blending_at_the_sites_is_exact():
    fanout = FanOut(SITES, k=4, config=CONFIG, mode=POOL)
    query = np.zeros((1, 8), dtype=np.float32)
    (blended,) = fanout.routings(query)
    everything = _Site("all", [h for site in SITES for h in site.hits])
    assert blended.scores == pytest.approx((0.9, 0.7, 0.6, 0.2)) and blended.passage_ids == ()
    torch.testing.assert_close(blended.weights, everything.exact(4, CONFIG))


def test_a_site_that_does_not_answer_is_skipped_and_named():
    fanout = FanOut([*SITES, _Down()], k=4, config=CONFIG, mode=POOL)
    (routing,) = fanout.routings(np.zeros((1, 8), dtype=np.float32))
    assert fanout.last_trace.answered == ["site-a", "site-b"] and "DEADLINE_EXCEEDED" in fanout.last_trace.failed["site-down"]
    assert routing.scores == pytest.approx((0.9, 0.7, 0.6, 0.2))
    with pytest.raises(SiteUnavailable, match="no site answered"):
        FanOut([_Down()], k=4, config=CONFIG, mode=POOL).routings(np.zeros((1, 8), dtype=np.float32))


def test_while_a_release_spreads_only_the_newest_pool_versions_replies_are_blended():
    query = np.zeros((1, 8), dtype=np.float32)
    upgraded = _Site("site-b", SITES[1].hits, version=2)
    (routing,), trace = FanOut([SITES[0], upgraded], k=4, config=CONFIG, mode=POOL).route(query)
    assert trace.version == 2 and trace.answered == ["site-b"] and "pool version 1" in trace.failed["site-a"]
    assert routing.scores == pytest.approx((0.7, 0.6))
    (_,), pinned = FanOut([SITES[0], upgraded], k=4, config=CONFIG, mode=POOL).route(query, version=1)
    assert pinned.answered == ["site-a"] and pinned.version == 1
    with pytest.raises(SiteUnavailable, match="usable pool"):  # never back to a version older than one served
        FanOut([SITES[0]], k=4, config=CONFIG, mode=POOL).route(query, min_version=2)


def test_a_sites_mixture_counts_by_its_share_of_the_global_top_k():
    query = np.zeros((1, 8), dtype=np.float32)
    exact = _Site("all", [h for site in SITES for h in site.hits]).exact(3, CONFIG)
    expected = combine(torch.tensor([[[[1., 0, 0, 0]], [[0, 0, 1, 0]], [[0, 0, 0, 1]]]]),
                       torch.tensor([[0.9, 0.7, 0.6]]), K, 0.1)[0]
    torch.testing.assert_close(exact, expected)  # the reference: site a's 0.2 passage is out
    replies = [site.route(query, 3, 0.1)[0] for site in SITES]
    blended = blend_replies(replies, 3, CONFIG)
    share = torch.softmax(torch.tensor([0.9, 0.7, 0.6]) / 0.1, 0)  # site a holds the first, site b the others
    mixtures = [torch.from_numpy(r.mixture[MIXTURE])[0] for r in replies]
    torch.testing.assert_close(blended.weights[0], share[0] * mixtures[0] + share[1:].sum() * mixtures[1])
    assert 0 < blended.weights[0, 1] < 1e-3  # site a's weak passage leaks in through its mixture, slightly


def test_a_batch_of_blended_routings_becomes_one_gate_per_request_and_mixed_batches_are_refused():
    factors = {"layers.0.mlp.down_proj": (torch.randn(K, 1, 6), torch.randn(K, 5, 1))}
    model = PolyModel(ExpertPool(factors, scale=1.0), PolyConfig(n_experts=K, top_m=K))
    weights = [torch.tensor([[1.0, 0, 0, 0]]), torch.tensor([[0, 0.5, 0.5, 0]])]
    adapter = model.adapter([Routing(weights=w) for w in weights])
    torch.testing.assert_close(adapter["layers.0.mlp.down_proj"].gate, torch.stack([w[0] for w in weights]))
    with pytest.raises(ValueError, match="1 of 2 requests carry blended expert weights"):
        model.adapter([Routing(weights=weights[0]), Routing(passage_ids=("p",), scores=(1.0,))])
