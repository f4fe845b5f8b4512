"""How the coordinator turns the sites' updates into the next expert pool.

Every strategy validates each update against the pool it broadcast (shapes, finiteness, the
wire schema) and rejects a malformed one without failing the round. They differ in how much each
site counts for each expert:

* :class:`ExpertMassAggregation` — each site's *change* to expert ``k`` counts in proportion to
  its routing mass on it, ``m_sk = Σ_p w_pk`` (docs/design.md §3), relative to the expert's heaviest
  user: ``E_k ← E_k + Σ_s (m_sk / max_s' m_s'k) ΔE_sk``. The main user's change lands whole and
  light users' changes are scaled down, so sites that store different facts in different experts
  do not dilute each other, as an average would;
* :class:`FedAvgAggregation` — plain FedAvg, the baseline: every expert is the mean of the sites'
  copies weighted by their sample counts.

FedProx is a client-side change (``poly.proximal_mu`` in the round settings) and works with both.

With central differential privacy on, :meth:`PoolStrategy.private_aggregate` replaces
:meth:`PoolStrategy.aggregate`: the weights must then depend on each site's own report only and
lie in [0, 1], so that one site cannot move the aggregate by more than the clip norm (see
:mod:`fedprag.coordinator.privacy`). Expert-mass weighs a site's change to expert ``k`` by its mass
there relative to its own heaviest expert; FedAvg weighs every site equally and divides by the
number of sites the round was sent to, not by what they report.

In distilled mode the sites train one shared model, the generator, and :class:`GeneratorAveraging`
is weighted FedAvg over its parameters (by the QA pairs each site distilled on), with the same
validation and the same DP aggregate as FedAvg's (every site weighted 1, divided by the sites asked).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fedprag.coordinator.privacy import DPSettings, add_noise, private_sum
from fedprag.shared.log import get_logger
from fedprag.shared.methods.poly.layers import ExpertPool
from fedprag.shared.methods.poly.serializer import pool_arrays, pool_from_arrays
from fedprag.shared.wire import GeneratorUpdate, SiteUpdate, WireError

log = get_logger(__name__)
MASS_KEY = "routing_mass"


class PoolStrategy:
    """Validation and the weighted per-expert average; subclasses say how sites are weighted."""

    name = "base"

    def site_weights(self, update: SiteUpdate, pool: ExpertPool) -> np.ndarray:
        """``[G, K]`` weight of this site for each routing group and expert."""
        raise NotImplementedError

    def validate(self, update: SiteUpdate, pool: ExpertPool) -> SiteUpdate:
        """Refuse an update whose tensors do not match the broadcast pool."""
        expected = {k: v.shape for k, v in pool_arrays(pool).items()}
        got = {k: v.shape for k, v in update.experts.items()}
        if got != expected:
            wrong = sorted(k for k in set(expected) | set(got) if expected.get(k) != got.get(k))
            raise WireError(f"update from {update.site}: expert tensors do not match the pool ({wrong[:3]})")
        mass = update.mass.get(MASS_KEY)
        if mass is None or mass.shape != (pool.n_groups, pool.n_experts) or (mass < 0).any():
            raise WireError(f"update from {update.site}: routing mass must be non-negative [{pool.n_groups}, {pool.n_experts}]")
        return update

    def aggregate(self, pool: ExpertPool, updates: Sequence[SiteUpdate]) -> ExpertPool:
        """The next pool from the broadcast one and the sites' validated updates."""
        if not updates:
            raise ValueError("no updates to aggregate")
        old = pool_arrays(pool)
        weights = np.stack([self.site_weights(u, pool) for u in updates])  # [S, G, K]
        merged = {}
        for key, current in old.items():
            w = weights[:, pool.groups[key.rsplit(".", 1)[0]], :]  # [S, K]
            shape = (len(updates), pool.n_experts) + (1,) * (current.ndim - 1)
            stacked = np.stack([u.experts[key] for u in updates])  # [S, K, ...]
            merged[key] = self.combine(current, stacked, w.reshape(shape)).astype(np.float32)
        return pool_from_arrays(merged, pool.scale, pool.routing)

    def combine(self, current: np.ndarray, copies: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """One module's experts from the sites' ``copies`` ``[S, K, …]`` and ``weights`` ``[S, K, 1…]``."""
        raise NotImplementedError

    def private_weights(self, update: SiteUpdate, pool: ExpertPool) -> np.ndarray:
        """``[G, K]`` weights in [0, 1] from this site's own report alone (the DP aggregate)."""
        raise NotImplementedError

    def private_denominator(self, sites_asked: int) -> float:
        """The public constant the DP aggregate's noisy sum is divided by."""
        raise NotImplementedError

    def private_sum(self, pool: ExpertPool, updates: Sequence[SiteUpdate], clip: float) -> dict[str, np.ndarray]:
        """``Σ_s w_s ⊙ clip(Δ_s)`` per expert tensor: L2 sensitivity ``clip`` to any one site."""
        broadcast = {k: v.astype(np.float64) for k, v in pool_arrays(pool).items()}
        weights = []
        for update in updates:
            w = self.private_weights(update, pool)
            weights.append({key: w[pool.groups[key.rsplit(".", 1)[0]]].reshape((-1,) + (1,) * (v.ndim - 1))
                            for key, v in broadcast.items()})
        return private_sum([u.experts for u in updates], broadcast, weights, clip)

    def private_aggregate(self, pool: ExpertPool, updates: Sequence[SiteUpdate], settings: DPSettings,
                          sites_asked: int) -> ExpertPool:
        """The next pool under central DP: ``E + (S + N(0, σ²C²)) / D`` (see :mod:`fedprag.coordinator.privacy`)."""
        noisy = add_noise(self.private_sum(pool, updates, settings.clip), settings)
        denominator = self.private_denominator(sites_asked)
        merged = {k: (v + noisy[k] / denominator).astype(np.float32) for k, v in pool_arrays(pool).items()}
        return pool_from_arrays(merged, pool.scale, pool.routing)


class ExpertMassAggregation(PoolStrategy):
    name = "expert_mass"

    def site_weights(self, update: SiteUpdate, pool: ExpertPool) -> np.ndarray:
        return update.mass[MASS_KEY].astype(np.float64)

    def combine(self, current: np.ndarray, copies: np.ndarray, weights: np.ndarray) -> np.ndarray:
        share = weights / np.maximum(weights.max(0, keepdims=True), 1e-12)
        return current + ((copies - current) * share).sum(0)

    def private_weights(self, update: SiteUpdate, pool: ExpertPool) -> np.ndarray:
        mass = update.mass[MASS_KEY].astype(np.float64)
        return mass / np.maximum(mass.max(-1, keepdims=True), 1e-12)

    def private_denominator(self, sites_asked: int) -> float:
        return 1.0


class FedAvgAggregation(PoolStrategy):
    name = "fedavg"

    def site_weights(self, update: SiteUpdate, pool: ExpertPool) -> np.ndarray:
        return np.full((pool.n_groups, pool.n_experts), float(update.sequences))

    def combine(self, current: np.ndarray, copies: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return (copies * weights).sum(0) / weights.sum(0)

    def private_weights(self, update: SiteUpdate, pool: ExpertPool) -> np.ndarray:
        return np.ones((pool.n_groups, pool.n_experts))

    def private_denominator(self, sites_asked: int) -> float:
        return float(max(sites_asked, 1))


class GeneratorAveraging:
    """Weighted FedAvg of the sites' generators (distilled mode)."""

    @staticmethod
    def validate(update: GeneratorUpdate, broadcast: Mapping[str, np.ndarray]) -> GeneratorUpdate:
        """Refuse an update whose parameters do not match the broadcast generator's, or that distilled on no QA pairs."""
        got = {k: v.shape for k, v in update.generator.items()}
        expected = {k: v.shape for k, v in broadcast.items()}
        if got != expected:
            wrong = sorted(k for k in set(expected) | set(got) if expected.get(k) != got.get(k))
            raise WireError(f"update from {update.site}: generator parameters do not match the broadcast ({wrong[:3]})")
        if update.qa_pairs == 0:
            raise WireError(f"update from {update.site}: distilled on no QA pairs")
        return update

    @staticmethod
    def aggregate(broadcast: Mapping[str, np.ndarray], updates: Sequence[GeneratorUpdate]) -> dict[str, np.ndarray]:
        """``θ ← Σ_s n_s θ_s / Σ_s n_s`` with ``n_s`` the site's QA-pair count."""
        if not updates:
            raise ValueError("no updates to aggregate")
        total = sum(u.qa_pairs for u in updates)
        return {k: sum(u.generator[k].astype(np.float64) * (u.qa_pairs / total) for u in updates).astype(np.float32)
                for k in broadcast}

    @staticmethod
    def private_aggregate(broadcast: Mapping[str, np.ndarray], updates: Sequence[GeneratorUpdate],
                          settings: DPSettings, sites_asked: int) -> dict[str, np.ndarray]:
        """``θ + (Σ_s clip(Δ_s) + N(0, σ²C²)) / S_asked``: L2 sensitivity ``clip`` per site."""
        start = {k: v.astype(np.float64) for k, v in broadcast.items()}
        noisy = add_noise(private_sum([u.generator for u in updates], start, [1.0] * len(updates), settings.clip),
                          settings)
        return {k: (v + noisy[k] / max(sites_asked, 1)).astype(np.float32) for k, v in start.items()}


STRATEGIES: dict[str, type[PoolStrategy]] = {s.name: s for s in (ExpertMassAggregation, FedAvgAggregation)}


def strategy_named(name: str) -> PoolStrategy:
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise ValueError(f"federation.strategy: unknown '{name}' (known: {', '.join(STRATEGIES)})") from None
