"""A token bucket per caller, shared by every service fedprag exposes (a site's routing service, the query API)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RateLimiter:
    """A token bucket per caller: ``burst`` requests at once, refilled at ``per_second``."""

    def __init__(self, per_second: float, burst: int, clock: Callable[[], float] = time.monotonic):
        if per_second <= 0 or burst < 1:
            raise ValueError("a rate limit needs a positive rate and a burst of at least 1")
        self.per_second, self.burst, self.clock = per_second, burst, clock
        self._buckets: dict[bytes, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, caller: bytes, count: int = 1) -> bool:
        """Take ``count`` from ``caller``'s bucket if it holds that many."""
        with self._lock:
            now = self.clock()
            level, then = self._buckets.get(caller, (float(self.burst), now))
            level = min(float(self.burst), level + (now - then) * self.per_second)
            allowed = level >= count
            self._buckets[caller] = (level - count if allowed else level, now)
            return allowed
