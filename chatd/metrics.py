"""Counters and histograms in Prometheus's text format, without a client library.

Everything is a plain attribute bumped on the event loop thread; ``render`` reads the rest
(connections, store and bus figures) from the app at scrape time. The histograms of store
calls and bus round trips live here and are handed to what fills them:
:class:`chatd.store.timed.TimedStore` and :class:`chatd.routing.router.Router`. Every metric
is listed in ``docs/operations.md``.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Iterable

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Histogram:
    __slots__ = ("counts", "sum", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0
        self.total = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds
        self.total += 1

    def lines(self, name: str, labels: str = "") -> Iterable[str]:
        cumulative = 0
        sep = "," if labels else ""
        for bound, count in zip(BUCKETS, self.counts, strict=False):
            cumulative += count
            yield f'{name}_bucket{{{labels}{sep}le="{bound}"}} {cumulative}'
        yield f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.total}'
        brace = f"{{{labels}}}" if labels else ""
        yield f"{name}_sum{brace} {self.sum:.6f}"
        yield f"{name}_count{brace} {self.total}"


class Metrics:
    def __init__(self) -> None:
        self.ws_opened = 0
        self.ws_closed = 0
        self.errors: Counter[str] = Counter()
        self.requests: dict[str, Histogram] = {}
        self.gauges: dict[str, Callable[[], float]] = {}
        self.counters: dict[str, Callable[[], float]] = {}
        # by Store method; a method appears once it has been called
        self.store_seconds: dict[str, Histogram] = {}
        self.store_errors: Counter[tuple[str, str]] = Counter()  # (method, error code)
        self.bus_publish_seconds = Histogram()
        self.bus_locate_seconds = Histogram()

    def count_error(self, code: str) -> None:
        self.errors[code] += 1

    def observe_request(self, kind: str, seconds: float) -> None:
        histogram = self.requests.get(kind)
        if histogram is None:
            histogram = self.requests[kind] = Histogram()
        histogram.observe(seconds)

    def render(self) -> str:
        out = [
            "# TYPE chatd_websocket_opened_total counter",
            f"chatd_websocket_opened_total {self.ws_opened}",
            "# TYPE chatd_websocket_closed_total counter",
            f"chatd_websocket_closed_total {self.ws_closed}",
            "# TYPE chatd_errors_total counter",
        ]
        out += [
            f'chatd_errors_total{{code="{code}"}} {n}' for code, n in sorted(self.errors.items())
        ]
        out.append("# TYPE chatd_request_seconds histogram")
        for kind, histogram in sorted(self.requests.items()):
            out += histogram.lines("chatd_request_seconds", f'type="{kind}"')
        out.append("# TYPE chatd_store_seconds histogram")
        for op, histogram in sorted(self.store_seconds.items()):
            if histogram.total:
                out += histogram.lines("chatd_store_seconds", f'op="{op}"')
        out.append("# TYPE chatd_store_errors_total counter")
        out += [
            f'chatd_store_errors_total{{op="{op}",code="{code}"}} {n}'
            for (op, code), n in sorted(self.store_errors.items())
        ]
        out.append("# TYPE chatd_bus_publish_seconds histogram")
        out += self.bus_publish_seconds.lines("chatd_bus_publish_seconds")
        out.append("# TYPE chatd_bus_locate_seconds histogram")
        out += self.bus_locate_seconds.lines("chatd_bus_locate_seconds")
        for name, read in sorted(self.gauges.items()):
            out += [f"# TYPE {name} gauge", f"{name} {read()}"]
        for name, read in sorted(self.counters.items()):
            out += [f"# TYPE {name} counter", f"{name} {read()}"]
        return "\n".join(out) + "\n"
