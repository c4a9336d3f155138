"""Latency histograms that merge across driver processes.

A sample is a latency in nanoseconds; it lands in a log-spaced bucket 1% wide, so percentiles
are exact to about 1% while a histogram of millions of samples stays a few hundred entries that
a driver can ship back as JSON.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

_RESOLUTION = 100.0  # buckets per e-fold: 1% wide


class Histogram:
    """Counts of latencies in log buckets; ``record`` is the hot path (one log, one dict op)."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.total = 0

    def record(self, latency_ns: int) -> None:
        # Microseconds, at least 1, so that the bucket index is never negative.
        bucket = int(math.log(max(latency_ns, 1000) / 1000.0) * _RESOLUTION)
        counts = self.counts
        counts[bucket] = counts.get(bucket, 0) + 1
        self.total += 1

    def merge(self, other: Histogram) -> None:
        for bucket, count in other.counts.items():
            self.counts[bucket] = self.counts.get(bucket, 0) + count
        self.total += other.total

    def percentile(self, pct: float) -> float | None:
        """The latency in milliseconds below which ``pct`` percent of samples fall."""
        if self.total == 0:
            return None
        rank = max(1, math.ceil(self.total * pct / 100.0))
        seen = 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen >= rank:
                # The bucket's midpoint, in ms.
                return math.exp((bucket + 0.5) / _RESOLUTION) / 1000.0
        return None  # unreachable: the counts add up to total

    def summary(self, pcts: Iterable[float] = (50, 90, 99, 99.9)) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for pct in pcts:
            value = self.percentile(pct)
            out[f"p{pct:g}"] = None if value is None else round(value, 3)
        return out

    def to_json(self) -> dict[str, int]:
        return {str(bucket): count for bucket, count in self.counts.items()}

    @classmethod
    def from_json(cls, data: Mapping[str, int]) -> Histogram:
        hist = cls()
        for bucket, count in data.items():
            hist.counts[int(bucket)] = int(count)
            hist.total += int(count)
        return hist

    @classmethod
    def merged(cls, parts: Iterable[Mapping[str, int]]) -> Histogram:
        hist = cls()
        for part in parts:
            hist.merge(cls.from_json(part))
        return hist
