"""Coordinator strategies: expert-mass aggregation, the FedAvg baseline, and rejected updates."""

import dataclasses

import numpy as np
import pytest
import torch

from fedprag.coordinator.modes import federated_router
from fedprag.coordinator.registry import PoolRegistry
from fedprag.coordinator.strategy import ExpertMassAggregation, FedAvgAggregation, strategy_named
from fedprag.shared.methods.poly.layers import ExpertPool, QueryRouter
from fedprag.shared.methods.poly.serializer import pool_arrays, router_arrays
from fedprag.shared.retrieval.encoder import EMBEDDING_DIM
from fedprag.shared.wire import SiteUpdate, WireError


def _pool(value=0.0):
    return ExpertPool({"m.layers.0.up": (torch.full((2, 1, 3), value), torch.full((2, 4, 1), value))}, scale=1.0)


def _update(site, value, mass, sequences=10):
    arrays = {k: np.full_like(v, value) for k, v in pool_arrays(_pool()).items()}
    return SiteUpdate(site=site, round=1, version=0, passages=5, sequences=sequences, loss=1.0,
                      experts=arrays, mass={"routing_mass": np.array([mass], dtype=np.float32)})


def test_expert_mass_weights_each_expert_by_the_sites_routing_on_it():
    pool = _pool(-1.0)
    updates = [_update("a", 1.0, [3.0, 0.0]), _update("b", 5.0, [1.0, 0.0])]
    merged = pool_arrays(ExpertMassAggregation().aggregate(pool, updates))["m.layers.0.up.lora_A"]
    np.testing.assert_allclose(merged[0], 3.0)  # -1 + 1·(1 - -1) + (1/3)·(5 - -1): the main user's change lands whole
    np.testing.assert_allclose(merged[1], -1.0)  # no site routed to expert 1: it keeps its value


def test_fedavg_weights_every_expert_by_sample_count():
    updates = [_update("a", 1.0, [3.0, 0.0], sequences=30), _update("b", 5.0, [1.0, 0.0], sequences=10)]
    merged = pool_arrays(FedAvgAggregation().aggregate(_pool(), updates))["m.layers.0.up.lora_A"]
    np.testing.assert_allclose(merged, 2.0)  # (30·1 + 10·5) / 40, for both experts


def test_malformed_updates_are_rejected():
    pool = _pool()
    strategy = strategy_named("expert_mass")
    wrong_shape = _update("a", 1.0, [1.0, 1.0])
    wrong_shape = SiteUpdate(**{**wrong_shape.__dict__, "experts": {k: v[:1] for k, v in wrong_shape.experts.items()}})
    with pytest.raises(WireError, match="do not match the pool"):
        strategy.validate(wrong_shape, pool)
    with pytest.raises(WireError, match="routing mass"):
        strategy.validate(_update("a", 1.0, [-1.0, 1.0]), pool)
    with pytest.raises(WireError, match="NaN"):
        _update("a", float("nan"), [1.0, 1.0])
    with pytest.raises(ValueError, match="unknown 'median'"):
        strategy_named("median")


def test_round_summaries_survive_a_torn_last_line(tmp_path):
    registry = PoolRegistry(tmp_path, base_digest="base")
    registry.record_round({"round": 1, "version": 1})
    with open(tmp_path / "rounds.jsonl", "a") as out:
        out.write('{"round": 2, "vers')  # the coordinator died mid-write
    assert PoolRegistry.rounds_at(tmp_path) == [{"round": 1, "version": 1}]


def test_the_learned_router_is_the_question_weighted_average_and_a_misshapen_one_is_left_out():
    pool = _pool()
    a, b = (QueryRouter(EMBEDDING_DIM, pool.n_groups, pool.n_experts) for _ in range(2))
    shares = [_update("s1", 0.0, [1, 1]), _update("s2", 0.0, [1, 1]), _update("s3", 0.0, [1, 1])]
    shares = [dataclasses.replace(shares[0], router=router_arrays(a), questions=30),
              dataclasses.replace(shares[1], router=router_arrays(b), questions=10),
              dataclasses.replace(shares[2], router={"net.0.weight": np.ones((2, 2), dtype=np.float32)}, questions=99)]
    merged = federated_router(shares, a)
    for name, tensor in merged.state_dict().items():
        torch.testing.assert_close(tensor, 0.75 * a.state_dict()[name] + 0.25 * b.state_dict()[name])
    assert federated_router(shares[2:], a) is None
