"""Rate limits as pure token buckets over a clock: no timers, no tasks, testable without sleep."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(slots=True)
class TokenBucket:
    rate: float  # tokens per second
    burst: float
    tokens: float
    updated_ms: int

    def take(self, now_ms: int, cost: float = 1.0) -> float:
        """Take ``cost`` tokens; return 0.0 on success, else the seconds until it would succeed."""
        elapsed = max(0, now_ms - self.updated_ms) / 1000.0
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.updated_ms = now_ms
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        if self.rate <= 0:
            return float("inf")
        return (cost - self.tokens) / self.rate


class KeyedLimiter:
    """One bucket per key (user, address, ...), keeping at most ``max_keys`` of the most recent."""

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def blocked(self, key: str, now_ms: int) -> float:
        """Seconds until ``key`` may spend a token again, without spending one."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0.0
        bucket.take(now_ms, cost=0.0)  # refills up to now
        if bucket.tokens >= 1.0:
            return 0.0
        return (1.0 - bucket.tokens) / bucket.rate if bucket.rate > 0 else float("inf")

    def spent(self, key: str) -> float:
        """The share of ``key``'s burst in use as of its last take (0.0 for an unknown key)."""
        bucket = self._buckets.get(key)
        return 0.0 if bucket is None else 1.0 - bucket.tokens / self.burst

    def take(self, key: str, now_ms: int, cost: float = 1.0) -> float:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(self.rate, self.burst, self.burst, now_ms)
            self._buckets[key] = bucket
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now_ms, cost)
