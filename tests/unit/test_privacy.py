"""Central DP: a site's change is clipped, noise is added, and ε is reported and composes."""

import numpy as np
import pytest

from fedprag.coordinator.privacy import DPSettings, add_noise, clip_update, epsilon
from fedprag.shared.wire import SiteUpdate


def test_clipping_bounds_a_sites_change_and_keeps_small_ones():
    broadcast = {"m.lora_A": np.zeros((2, 3), dtype=np.float32)}
    update = SiteUpdate(site="s", round=1, pool_version=0, passages=1, sequences=1, loss=0.5,
                        experts={"m.lora_A": np.full((2, 3), 10.0, dtype=np.float32)},
                        mass={"routing_mass": np.ones((1, 2), dtype=np.float32)})
    clipped = clip_update(update, broadcast, clip=1.0)
    assert np.linalg.norm(clipped.experts["m.lora_A"]) == pytest.approx(1.0, rel=1e-5)
    assert clip_update(update, broadcast, clip=1e6).experts["m.lora_A"][0, 0] == pytest.approx(10.0)


def test_noise_is_added_with_the_configured_scale():
    arrays = {"m": np.zeros((200, 200), dtype=np.float32)}
    noisy = add_noise(arrays, DPSettings(clip=0.5, noise_multiplier=2.0), round_number=1)["m"]
    assert noisy.std() == pytest.approx(1.0, rel=0.05)


def test_epsilon_grows_with_rounds_and_shrinks_with_noise():
    assert epsilon(0, 1.0, 1e-5) == 0.0
    assert epsilon(8, 1.0, 1e-5) > epsilon(1, 1.0, 1e-5)
    assert epsilon(8, 4.0, 1e-5) < epsilon(8, 1.0, 1e-5)
    assert 0 < epsilon(1, 10.0, 1e-5) < 1.0
