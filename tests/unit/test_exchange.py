"""The coordinator's exchange with the sites: replies are taken as they arrive (every
``PULL_INTERVAL``), not after Flower's fixed 3 s sleep, and a round that times out keeps what came."""

import time
from types import SimpleNamespace

from fedprag.coordinator.app import PULL_INTERVAL, exchange


class ScriptedGrid:
    """A grid (unit-test stand-in for Flower's) whose site ``i`` replies ``delays[i]`` s after the push."""

    def __init__(self, delays: list[float | None]):
        self.delays, self.pushed, self.pulls = delays, 0.0, 0

    def push_messages(self, messages):
        self.pushed = time.monotonic()
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, ids):
        self.pulls += 1
        waited = time.monotonic() - self.pushed
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=f"m{i}"))
                for i, delay in enumerate(self.delays) if f"m{i}" in ids and delay is not None and delay <= waited]


def test_the_exchange_ends_as_soon_as_the_last_reply_is_in():
    grid = ScriptedGrid([0.0, 0.3, 0.5])
    started = time.monotonic()
    replies = exchange(grid, ["a", "b", "c"], timeout=30)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1", "m2"]
    assert time.monotonic() - started < 0.5 + 2 * PULL_INTERVAL + 0.5  # Flower's own loop: 3 s at least


def test_a_site_that_never_replies_costs_the_timeout_and_the_others_are_kept():
    grid = ScriptedGrid([0.0, None])
    started = time.monotonic()
    replies = exchange(grid, ["a", "b"], timeout=1.0)
    assert [r.metadata.reply_to_message_id for r in replies] == ["m0"]
    assert 1.0 <= time.monotonic() - started < 1.0 + 2 * PULL_INTERVAL + 0.5
