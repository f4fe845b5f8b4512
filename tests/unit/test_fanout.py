"""The query API's fan-out: the global top-k over the sites' replies, blended into one mixture per query."""

import numpy as np
import pytest
import torch

from fedprag.cluster.fanout import FanOut
from fedprag.shared.methods.base import Routing
from fedprag.shared.methods.poly.config import PolyConfig
from fedprag.shared.methods.poly.layers import ExpertPool, combine
from fedprag.shared.methods.poly.model import PolyModel
from fedprag.shared.wire import RoutingReply

K = 4


class _Site:
    """Answers every query with fixed hits: opaque id → (score, routing row)."""

    def __init__(self, name, hits):
        self.name, self.hits = name, hits

    def route(self, query_embeddings, k):
        best = sorted(self.hits.items(), key=lambda h: -h[1][0])[:k]
        return [RoutingReply(site=self.name, pool_version=1, scores={o: s for o, (s, _) in best},
                             routing={o: w for o, (_, w) in best}) for _ in query_embeddings]


def _row(*weights):
    return np.array([weights], dtype=np.float32)


def test_the_global_top_k_across_sites_is_blended_by_score():
    config = PolyConfig(n_experts=K, top_m=K, score_temperature=0.1)
    a = _Site("site-a", {"xa1": (0.9, _row(1, 0, 0, 0)), "xa2": (0.2, _row(0, 1, 0, 0))})
    b = _Site("site-b", {"xb1": (0.7, _row(0, 0, 1, 0)), "xb2": (0.6, _row(0, 0, 0, 1))})
    (routing,) = FanOut([a, b], k=3, config=config).routings(np.zeros((1, 8), dtype=np.float32))
    assert routing.scores == pytest.approx((0.9, 0.7, 0.6)) and routing.passage_ids == ()
    expected = combine(torch.tensor([[[[1., 0, 0, 0]], [[0, 0, 1, 0]], [[0, 0, 0, 1]]]]),
                       torch.tensor([[0.9, 0.7, 0.6]]), K, 0.1)[0]
    torch.testing.assert_close(routing.weights, expected)
    assert routing.weights[0, 1] == 0  # xa2 is not in the global top 3


def test_a_batch_of_blended_routings_becomes_one_gate_per_request_and_mixed_batches_are_refused():
    factors = {"layers.0.mlp.down_proj": (torch.randn(K, 1, 6), torch.randn(K, 5, 1))}
    model = PolyModel(ExpertPool(factors, scale=1.0), PolyConfig(n_experts=K, top_m=K))
    weights = [torch.tensor([[1.0, 0, 0, 0]]), torch.tensor([[0, 0.5, 0.5, 0]])]
    adapter = model.adapter([Routing(weights=w) for w in weights])
    torch.testing.assert_close(adapter["layers.0.mlp.down_proj"].gate, torch.stack([w[0] for w in weights]))
    with pytest.raises(ValueError, match="1 of 2 requests carry blended expert weights"):
        model.adapter([Routing(weights=weights[0]), Routing(passage_ids=("p",), scores=(1.0,))])
