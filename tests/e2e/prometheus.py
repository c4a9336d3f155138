"""Read Prometheus's text exposition format (what ``GET /metrics`` answers) in tests."""

from __future__ import annotations

import re

from .client import Harness

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of a Prometheus text exposition: ``(name, labels, value)``."""
    out: list[tuple[str, dict[str, str], float]] = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a Prometheus sample: {line!r}"
        out.append((m.group(1), dict(LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return out


def histogram(
    text: str, name: str, **labels: str
) -> tuple[list[tuple[float, float]], float, float]:
    """``([(le, cumulative count)...], sum, count)`` of one histogram series; checks that the
    buckets are cumulative and that ``+Inf`` equals ``_count``."""
    buckets: list[tuple[float, float]] = []
    total = count = None
    for sample, got, value in samples(text):
        rest = {k: v for k, v in got.items() if k != "le"}
        if rest != labels:
            continue
        if sample == f"{name}_bucket":
            buckets.append((float(got["le"]), value))
        elif sample == f"{name}_sum":
            total = value
        elif sample == f"{name}_count":
            count = value
    assert buckets and total is not None and count is not None, f"{name}{labels} missing"
    bounds = [le for le, _ in buckets]
    assert bounds == sorted(bounds) and bounds[-1] == float("inf"), bounds
    counts = [n for _, n in buckets]
    assert counts == sorted(counts), f"{name}{labels} buckets are not cumulative: {buckets}"
    assert counts[-1] == count, (buckets, count)
    return buckets, total, count


async def scrape(h: Harness) -> str:
    """The text of ``GET /metrics`` (which needs no token)."""
    status, text = await h.http("GET", "/metrics")
    assert status == 200, (status, text)
    return str(text)
