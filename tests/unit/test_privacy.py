"""Central DP holds: one site moves the aggregate by at most the clip norm whatever it sends, the
noise cannot be regenerated, ε is dp-accounting's, and nothing un-noised is published."""

import json

import numpy as np
import pytest
import torch
from dp_accounting import dp_event, pld, rdp

from fedprag.coordinator.app import RoundReport, aggregate_and_publish
from fedprag.coordinator.modes import PoolMode
from fedprag.coordinator.privacy import DPSettings, add_noise, clipped_change, epsilon, secure_normal
from fedprag.coordinator.registry import PoolRegistry
from fedprag.coordinator.strategy import MASS_KEY, STRATEGIES
from fedprag.shared.config import FederationSection
from fedprag.shared.methods.poly.config import PolyConfig
from fedprag.shared.methods.poly.layers import ExpertPool
from fedprag.shared.methods.poly.serializer import pool_arrays
from fedprag.shared.wire import SiteUpdate

K = 4


def _pool(seed=0) -> ExpertPool:
    g = torch.Generator().manual_seed(seed)
    factors = {f"layers.{i}.mlp.down_proj": (torch.randn(K, 1, 6, generator=g), torch.randn(K, 5, 1, generator=g))
               for i in range(2)}
    return ExpertPool(factors, scale=2.0)


def _update(pool, rng, site="s", scale=0.1, mass=None, sequences=10, passages=3, loss=1.0) -> SiteUpdate:
    experts = {k: (v + rng.normal(0, scale, v.shape)).astype(np.float32) for k, v in pool_arrays(pool).items()}
    mass = rng.uniform(0, 5, (1, K)).astype(np.float32) if mass is None else np.asarray(mass, dtype=np.float32)
    return SiteUpdate(site=site, round=1, version=0, passages=passages, sequences=sequences, loss=loss,
                      experts=experts, mass={MASS_KEY: mass})


def _norm(a, b) -> float:
    return float(np.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in a)))


def test_a_sites_change_is_clipped_to_the_bound_and_small_changes_are_kept():
    pool, rng = _pool(), np.random.default_rng(0)
    broadcast = pool_arrays(pool)
    big = clipped_change(_update(pool, rng, scale=10.0).experts, broadcast, clip=1.0)
    assert _norm(big, {k: np.zeros_like(v) for k, v in big.items()}) == pytest.approx(1.0, rel=1e-6)
    small = _update(pool, rng, scale=1e-4)
    kept = clipped_change(small.experts, broadcast, clip=1.0)
    assert all(np.allclose(kept[k], small.experts[k] - broadcast[k], atol=1e-6) for k in kept)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_the_sensitivity_bound_holds_under_an_adversarial_site(strategy):
    """However one site chooses its experts, masses and counts, the sum the noise protects moves by ≤ clip."""
    aggregator, pool, rng = STRATEGIES[strategy](), _pool(), np.random.default_rng(1)
    honest = [_update(pool, rng, site=f"h{i}") for i in range(4)]
    clip, worst = 0.5, 0.0
    adversaries = [
        _update(pool, rng, site="a", scale=1e3, mass=[[1e30] * K], sequences=10**9, passages=10**9),
        _update(pool, rng, site="a", scale=1e3, mass=[[0, 0, 0, 1e30]], sequences=0),
        _update(pool, rng, site="a", scale=1e-6, mass=[[1e-30] * K]),
        *[_update(pool, rng, site="a", scale=float(rng.uniform(0, 100)), mass=rng.uniform(0, 1e6, (1, K)),
                  sequences=int(rng.integers(0, 10**6))) for _ in range(50)],
    ]
    without = aggregator.private_sum(pool, honest, clip)
    for adversary in adversaries:
        for position in (0, 2, 4):
            with_it = aggregator.private_sum(pool, honest[:position] + [adversary] + honest[position:], clip)
            worst = max(worst, _norm(with_it, without))
    assert 0 < worst <= clip * (1 + 1e-9)


def test_noise_comes_from_the_os_differs_between_draws_and_has_the_configured_scale():
    first, second = secure_normal((300, 300), 1.0), secure_normal((300, 300), 1.0)
    assert not np.array_equal(first, second)
    assert abs(first.mean()) < 0.02 and first.std() == pytest.approx(1.0, rel=0.02)
    noisy = add_noise({"m": np.zeros((200, 200))}, DPSettings(clip=0.5, noise_multiplier=2.0))["m"]
    assert noisy.std() == pytest.approx(1.0, rel=0.05)


def test_epsilon_is_dp_accountings_and_lies_between_the_pld_and_closed_form_bounds():
    for rounds, sigma, delta in [(10, 1.0, 1e-5), (1, 4.0, 1e-6), (50, 2.0, 1e-5)]:
        accountant = rdp.RdpAccountant()
        accountant.compose(dp_event.GaussianDpEvent(sigma), rounds)
        assert epsilon(rounds, sigma, delta) == pytest.approx(accountant.get_epsilon(delta), rel=1e-9)
        tight = pld.PLDAccountant()
        tight.compose(dp_event.GaussianDpEvent(sigma), rounds)
        closed_form = min(rounds * a / (2 * sigma ** 2) + np.log(1 / delta) / (a - 1) for a in np.arange(1.1, 200, 0.1))
        assert tight.get_epsilon(delta) <= epsilon(rounds, sigma, delta) <= closed_form
    assert epsilon(10, 1.0, 1e-5) == pytest.approx(19.05, abs=0.01)  # dp-accounting: R=10, σ=1, δ=1e-5
    assert epsilon(0, 1.0, 1e-5) == 0.0


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_the_coordinator_with_dp_on_publishes_differently_noised_pools_and_no_loss(strategy, tmp_path):
    pool, rng = _pool(), np.random.default_rng(2)
    updates = [_update(pool, rng, site=f"s{i}") for i in range(3)]
    published = []
    for run in ("a", "b"):
        registry = PoolRegistry(tmp_path / run, "d" * 64)
        report = RoundReport(round=1, version=None)
        mode = PoolMode(registry, pool, 0, 0, None, PolyConfig(n_experts=K),
                        FederationSection(strategy=strategy, dp_clip=0.1, dp_noise_multiplier=1.0))
        version = aggregate_and_publish(mode, updates, report, sites_asked=3)
        manifest = json.loads((registry.path(version) / "manifest.json").read_text())
        assert "loss" not in manifest["metrics"] and report.loss is None
        assert manifest["metrics"]["epsilon"] == pytest.approx(epsilon(1, 1.0, 1e-5))
        assert mode.router is None and not registry.versions_with_router(draft=True)  # no router under central DP
        published.append(pool_arrays(mode.pool))
    assert _norm(published[0], published[1]) > 0.1  # two runs, same inputs: different noise
    exact = STRATEGIES[strategy]().private_sum(pool, updates, 0.1)
    denominator = STRATEGIES[strategy]().private_denominator(3)
    for arrays in published:  # the noise on the sum has the configured scale (σ·C = 0.1)
        noise = np.concatenate([((arrays[k] - v) * denominator - exact[k]).ravel() for k, v in pool_arrays(pool).items()])
        assert 0.05 < noise.std() < 0.2
