"""Central differential privacy for the expert pool, at site level.

Each round with DP on is one Gaussian mechanism over the sites' updates:

1. ``Δ_s = clip(E_s − E, C)``: site ``s``'s change to every expert tensor against the broadcast pool
   ``E``, scaled down to L2 norm at most ``C`` over all tensors together.
2. ``w_s ∈ [0, 1]^{G×K}``: the strategy's weight of site ``s`` on each expert, computed from that
   site's own report alone (:meth:`~fedprag.coordinator.strategy.PoolStrategy.private_weights`).
3. ``S = Σ_s w_s ⊙ Δ_s``. Adding or removing one site, whatever it sends, changes ``S`` by its own
   term, of norm ``‖w_s ⊙ Δ_s‖ ≤ ‖Δ_s‖ ≤ C``, and no other site's term: **the L2 sensitivity of S
   is C** (tested against adversarial sites).
4. ``E' = E + (S + N(0, σ²C²)) / D``, with ``D`` public and the same whichever sites answer
   (:meth:`~fedprag.coordinator.strategy.PoolStrategy.private_denominator`); dividing by it is
   post-processing.

So every round is the Gaussian mechanism with noise multiplier ``σ``, every site in every round,
and ε after ``R`` rounds comes from dp-accounting's Rényi-DP accountant. What this protects is the
content of a site's update (and so of its passages): neighbouring rounds differ in one site's term,
and which sites took part is public (the round records name them, and the coordinator knows whom
it asked). The noise is drawn from the operating system's cryptographically secure generator
(``os.urandom``); there is no seed from which anyone could regenerate it and subtract it from the
published pool. No un-noised statistic of the updates is published beside the pool: with DP on,
the coordinator records no training loss. ε counts every round of the registry, so a registry
that ran without DP, or with another ``σ``, cannot be resumed with DP on.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from dp_accounting import dp_event, rdp


@dataclass(frozen=True)
class DPSettings:
    clip: float = 1.0
    noise_multiplier: float = 1.0
    delta: float = 1e-5


def clipped_change(params: Mapping[str, np.ndarray], broadcast: Mapping[str, np.ndarray],
                   clip: float) -> dict[str, np.ndarray]:
    """A site's change (its trained ``params``) against ``broadcast``, scaled down to L2 norm
    ``clip`` (over all tensors) if larger."""
    change = {k: params[k].astype(np.float64) - v for k, v in broadcast.items()}
    norm = math.sqrt(sum(float((d ** 2).sum()) for d in change.values()))
    factor = min(1.0, clip / norm) if norm > 0 else 1.0
    return {k: d * factor for k, d in change.items()}


def private_sum(trained: Sequence[Mapping[str, np.ndarray]], broadcast: Mapping[str, np.ndarray],
                weights: Sequence[Mapping[str, np.ndarray] | float], clip: float) -> dict[str, np.ndarray]:
    """``S = Σ_s w_s ⊙ clip(Δ_s)`` over the sites' ``trained`` parameters; ``weights[s]`` (per
    tensor, broadcasting against it, or one number) lies in [0, 1]."""
    total = {k: np.zeros(v.shape, dtype=np.float64) for k, v in broadcast.items()}
    for params, weight in zip(trained, weights):
        for key, change in clipped_change(params, broadcast, clip).items():
            total[key] += np.clip(weight if isinstance(weight, float) else weight[key], 0.0, 1.0) * change
    return total


def secure_normal(shape: tuple[int, ...], std: float) -> np.ndarray:
    """Gaussian noise from ``os.urandom`` (Box–Muller over 53-bit uniforms): not reproducible by anyone."""
    count = int(np.prod(shape))
    bits = np.frombuffer(os.urandom(16 * ((count + 1) // 2)), dtype=np.uint64) >> np.uint64(11)
    uniform = (bits.astype(np.float64) + 0.5) * 2.0 ** -53  # in (0, 1): the logarithm is finite
    u1, u2 = uniform[0::2], uniform[1::2]
    radius = np.sqrt(-2.0 * np.log(u1))
    normal = np.concatenate([radius * np.cos(2 * np.pi * u2), radius * np.sin(2 * np.pi * u2)])
    return (normal[:count] * std).reshape(shape)


def add_noise(total: Mapping[str, np.ndarray], settings: DPSettings) -> dict[str, np.ndarray]:
    """``total`` plus Gaussian noise of standard deviation ``noise_multiplier · clip`` on every value."""
    std = settings.noise_multiplier * settings.clip
    return {k: v + secure_normal(v.shape, std) for k, v in total.items()}


def epsilon(rounds: int, noise_multiplier: float, delta: float) -> float:
    """(ε, δ) after ``rounds`` Gaussian mechanisms of noise multiplier σ (dp-accounting, Rényi DP)."""
    if rounds == 0:
        return 0.0
    accountant = rdp.RdpAccountant()
    accountant.compose(dp_event.GaussianDpEvent(noise_multiplier), rounds)
    return float(accountant.get_epsilon(delta))
