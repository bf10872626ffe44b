"""Per-user rate limiting of the gateway: one token bucket per hub user.

A bucket holds up to ``burst`` calls and refills at ``rate`` calls per second; a call takes one
from its user's bucket or is refused with the seconds until one is back (the gateway answers
429 with that as ``Retry-After``). Buckets are keyed by the hub user's name, not the token, so
a user cannot multiply the limit by creating tokens.

Memory stays bounded by the users active recently: a bucket left alone long enough to refill
is indistinguishable from a new one, so buckets idle that long are dropped, in a sweep that
runs at most once per refill period (amortized O(1) per call).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class RateLimiter:
    """Token buckets by key; :meth:`acquire` is the whole per-call cost (a dict and a clock)."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("a rate limiter needs a positive rate and burst")
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        #: Seconds an untouched bucket takes to be full again: then it can be forgotten.
        self._refill = self.burst / rate
        #: key → (calls left, when that was computed).
        self._buckets: dict[str, tuple[float, float]] = {}
        self._next_sweep = clock() + self._refill

    def acquire(self, key: str) -> float:
        """Take one call from ``key``'s bucket: 0.0 if allowed, else seconds until one is."""
        now = self._clock()
        if now >= self._next_sweep:
            self._sweep(now)
        tokens, since = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - since) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def __len__(self) -> int:
        return len(self._buckets)

    def _sweep(self, now: float) -> None:
        idle = now - self._refill
        self._buckets = {key: value for key, value in self._buckets.items() if value[1] > idle}
        self._next_sweep = now + self._refill


def retry_after(wait: float) -> str:
    """``wait`` seconds as a ``Retry-After`` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(wait)))
