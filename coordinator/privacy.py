"""Central differential privacy for the pool: clip each site's change, add Gaussian noise, report ε.

Each site's update is turned into its change against the broadcast pool and clipped to L2 norm
``clip`` over all its expert tensors, before the strategy aggregates. Both strategies let one
site move the aggregate by at most ``clip`` (expert-mass scales a change by a share ≤ 1; FedAvg
by a weight ≤ 1), so Gaussian noise of standard deviation ``noise_multiplier · clip`` on every
aggregated value makes each round a Gaussian mechanism with sensitivity ``clip`` (site-level
privacy, every site in every round). ε after R rounds comes from Rényi-DP composition,
``ε = min_α R·α / (2σ²) + log(1/δ) / (α − 1)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedprag.shared.wire import SiteUpdate


@dataclass(frozen=True)
class DPSettings:
    clip: float = 1.0
    noise_multiplier: float = 1.0
    delta: float = 1e-5
    seed: int = 0


def clip_update(update: SiteUpdate, broadcast: dict[str, np.ndarray], clip: float) -> SiteUpdate:
    """The update with its change against ``broadcast`` scaled down to L2 norm ``clip`` if larger."""
    norm = math.sqrt(sum(float(((update.experts[k] - v) ** 2).sum()) for k, v in broadcast.items()))
    factor = min(1.0, clip / norm) if norm > 0 else 1.0
    experts = {k: (v + (update.experts[k] - v) * factor).astype(np.float32) for k, v in broadcast.items()}
    return SiteUpdate(**{**update.__dict__, "experts": experts})


def add_noise(arrays: dict[str, np.ndarray], settings: DPSettings, round_number: int) -> dict[str, np.ndarray]:
    """Gaussian noise of std ``noise_multiplier · clip`` on every aggregated value."""
    rng = np.random.default_rng([settings.seed, round_number])
    std = settings.noise_multiplier * settings.clip
    return {k: (v + rng.normal(0.0, std, v.shape)).astype(np.float32) for k, v in arrays.items()}


def epsilon(rounds: int, noise_multiplier: float, delta: float) -> float:
    """(ε, δ)-DP of ``rounds`` Gaussian mechanisms of noise multiplier σ, by RDP composition."""
    if rounds == 0:
        return 0.0
    orders = [1 + x / 10 for x in range(1, 1000)]
    return min(rounds * a / (2 * noise_multiplier ** 2) + math.log(1 / delta) / (a - 1) for a in orders)
