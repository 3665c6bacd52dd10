"""Token buckets per caller: how many calls of a route a caller may make, in this process.

Each caller (an API key's fingerprint, or a client address where no keys are set) has a
bucket of ``burst`` tokens that refills at ``rate_per_s``; a call takes one token, and a call
that finds none is refused with the seconds until the next one (the answer's Retry-After).
The buckets of callers not seen for a while are dropped, so a flood of distinct callers
holds at most ``max_callers`` buckets. Plain Python, no lock: the Serve replica calls it
from its event loop only.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float  # when ``tokens`` was counted


class RateLimiter:
    """``take(caller)``: 0.0 when the call may go ahead, else the seconds to wait (> 0)."""

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_callers: int = 10_000,
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("a rate limit needs rate_per_s > 0 and burst >= 1")
        self.rate = rate_per_s
        self.burst = float(burst)
        self.clock = clock
        self.max_callers = max_callers
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, caller: str) -> float:
        now = self.clock()
        bucket = self._buckets.pop(caller, None)
        if bucket is None:
            bucket = _Bucket(self.burst, now)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
        self._buckets[caller] = bucket  # most recent last
        while len(self._buckets) > self.max_callers:
            self._buckets.popitem(last=False)  # the caller seen longest ago
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    @staticmethod
    def retry_after_header(wait_s: float) -> int:
        """Retry-After is whole seconds: rounded up, at least 1."""
        return max(1, math.ceil(wait_s))
