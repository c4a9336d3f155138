"""From the workloads' results to the table, the JSON file and the latency-vs-load plot.

Each row: a workload, a metric, chatd's figure, the relay's figure from the same run, the ratio
chatd / relay, the target, and whether it is met. The ratio is the headline: absolute figures
on a shared 2-core machine move from run to run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Row:
    workload: str
    metric: str
    chatd: float | int | None
    relay: float | int | None = None
    target: str = ""
    status: str = ""

    @property
    def ratio(self) -> float | None:
        if self.chatd is None or not self.relay:
            return None
        return round(self.chatd / self.relay, 2)

    def as_json(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "metric": self.metric,
            "chatd": self.chatd,
            "relay": self.relay,
            "ratio": self.ratio,
            "target": self.target,
            "status": self.status,
        }


def _met(ok: bool, missed: str) -> str:
    return "met" if ok else f"MISSED: {missed}"


def build_rows(results: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    one = results.get("1to1", {})
    c, r = one.get("chatd"), one.get("relay")
    if c or r:
        c = c or {}
        r = r or {}
        status = target = ""
        if c.get("msgs_per_s") and r.get("msgs_per_s"):
            ratio = c["msgs_per_s"] / r["msgs_per_s"]
            target = ">= 0.5x relay"
            status = _met(ratio >= 0.5, f"{ratio:.2f}x, {0.5 / ratio:.1f}x short")
        rows.append(
            Row(
                "1:1 throughput (50 pairs)",
                "msgs/s",
                c.get("msgs_per_s"),
                r.get("msgs_per_s"),
                target,
                status,
            )
        )
        for pct in ("p50", "p90", "p99"):
            rows.append(
                Row("1:1 throughput (50 pairs)", f"latency {pct} ms", c.get(pct), r.get(pct))
            )
        _lost_rows(rows, "1:1 throughput (50 pairs)", c, r)
        _cpu_rows(rows, "1:1 throughput (50 pairs)", c, r)
    latency = results.get("latency", {})
    c_points = {p["fraction"]: p for p in latency.get("chatd", [])}
    r_points = {p["fraction"]: p for p in latency.get("relay", [])}
    for fraction in sorted(set(c_points) | set(r_points)):
        cp, rp = c_points.get(fraction, {}), r_points.get(fraction, {})
        name = f"latency at {fraction:.0%} of max"
        rows.append(Row(name, "achieved msgs/s", cp.get("msgs_per_s"), rp.get("msgs_per_s")))
        for pct in ("p50", "p99", "p99.9"):
            target = status = ""
            if pct == "p99" and fraction == 0.5 and cp.get("p99") is not None:
                target = "< 25 ms"
                status = _met(cp["p99"] < 25, f"{cp['p99']:.1f} ms")
            rows.append(Row(name, f"{pct} ms", cp.get(pct), rp.get(pct), target, status))
    for size, pair in sorted(results.get("fanout", {}).items(), key=lambda kv: int(kv[0])):
        c, r = pair.get("chatd", {}), pair.get("relay", {})
        name = f"fan-out, group of {size}"
        target = status = ""
        if int(size) == 1000 and c.get("deliveries_per_s"):
            target = ">= 0.6x relay and >= 100,000"
            ratio = (
                c["deliveries_per_s"] / r["deliveries_per_s"] if r.get("deliveries_per_s") else 0
            )
            ok = ratio >= 0.6 and c["deliveries_per_s"] >= 100_000
            status = _met(ok, f"{ratio:.2f}x relay, {c['deliveries_per_s']:,}/s")
        rows.append(
            Row(
                name,
                "deliveries/s",
                c.get("deliveries_per_s"),
                r.get("deliveries_per_s"),
                target,
                status,
            )
        )
        rows.append(Row(name, "messages/s", c.get("msgs_per_s"), r.get("msgs_per_s")))
        rows.append(Row(name, "p50 ms, each member", c.get("p50"), r.get("p50")))
        rows.append(Row(name, "p99 ms, each member", c.get("p99"), r.get("p99")))
        rows.append(Row(name, "p99 ms, last member", c.get("last_p99"), r.get("last_p99")))
        _cpu_rows(rows, name, c, r)
    idle = results.get("idle", {})
    if idle:
        c, r = idle.get("chatd", {}), idle.get("relay", {})
        n = c.get("connections") or r.get("connections")
        name = f"idle connections ({n:,} held)" if n else "idle connections"
        kb = c.get("kb_per_conn")
        rows.append(
            Row(
                name,
                "server RSS KB per connection",
                kb,
                r.get("kb_per_conn"),
                "<= 25 KB",
                _met(kb is not None and kb <= 25, f"{kb} KB") if kb is not None else "",
            )
        )
        pct = c.get("core_pct_at_19000_at_25s")
        rows.append(
            Row(
                name,
                "heartbeat CPU, % of a core for 19,000 at 25 s",
                pct,
                r.get("core_pct_at_19000_at_25s"),
                "< 1%",
                _met(pct < 1, f"{pct}%") if pct is not None else "",
            )
        )
        for label, figures in (("chatd", c), ("relay", r)):
            if "still_open" in figures and figures["still_open"] < figures["connections"]:
                dropped = figures["connections"] - figures["still_open"]
                rows.append(
                    Row(
                        name,
                        f"{label}: connections dropped while measured",
                        dropped,
                        None,
                        "0",
                        "MISSED: the CPU figure is not reliable",
                    )
                )
        rows.append(
            Row(
                name,
                "heartbeat CPU ms per connection per minute",
                c.get("cpu_ms_per_conn_per_min_at_25s"),
                r.get("cpu_ms_per_conn_per_min_at_25s"),
            )
        )
    hist = results.get("history", {})
    if hist.get("pages_per_s") is not None:
        name = f"history ({hist['messages']:,} messages)"
        rows.append(Row(name, "pages/s (50 messages each)", hist["pages_per_s"]))
        rows.append(Row(name, "page latency p99 ms", hist.get("p99")))
        full, empty = hist["full_1to1"], hist["empty_1to1"]
        rows.append(Row(name, "1:1 msgs/s, full store", full["msgs_per_s"]))
        rows.append(Row(name, "1:1 msgs/s, empty store", empty["msgs_per_s"]))
        ratio = hist["full_vs_empty"]
        rows.append(
            Row(name, "full / empty", ratio, None, ">= 0.9", _met(ratio >= 0.9, f"{ratio:.2f}"))
        )
    cross = results.get("cross", {})
    if cross.get("msgs_per_s") is not None:
        relay = results.get("1to1", {}).get("relay", {})
        single = results.get("1to1", {}).get("chatd", {})
        name = "1:1 across 2 processes (Redis)"
        rows.append(Row(name, "msgs/s", cross["msgs_per_s"], relay.get("msgs_per_s")))
        rows.append(
            Row(
                name,
                "vs one chatd process",
                round(cross["msgs_per_s"] / single["msgs_per_s"], 2)
                if single.get("msgs_per_s")
                else None,
            )
        )
        for pct in ("p50", "p99"):
            rows.append(Row(name, f"latency {pct} ms", cross.get(pct), relay.get(pct)))
        _lost_rows(rows, name, cross, {})
    for key, value in results.items():
        if isinstance(value, dict) and "error" in value:
            first_line = str(value["error"]).splitlines()[0] if value["error"] else "?"
            rows.append(Row(key, "FAILED", None, None, "", first_line[:160]))
    return rows


def _lost_rows(rows: list[Row], name: str, c: dict[str, Any], r: dict[str, Any]) -> None:
    """Rows for messages never delivered and set-up retries, only when there were any."""
    for key, metric, missed in (
        ("undelivered", "messages never delivered", "MISSED: live delivery lost messages"),
        # Delivery is best effort, so not a missed target, but a client would notice.
        (
            "setup_retries",
            "first messages resent in set-up",
            "a first message right after hello was not delivered live",
        ),
    ):
        if c.get(key) or r.get(key):
            rows.append(
                Row(name, metric, c.get(key), r.get(key), "0", missed if c.get(key) else "")
            )


def _cpu_rows(rows: list[Row], name: str, c: dict[str, Any], r: dict[str, Any]) -> None:
    """Who used the two cores: a driver near 1.0 per process would be measuring itself."""

    def total(figures: dict[str, Any], key: str) -> float | None:
        values = figures.get(key)
        return round(sum(values), 2) if values else None

    rows.append(Row(name, "server CPU, cores", total(c, "server_cpu"), total(r, "server_cpu")))
    rows.append(
        Row(name, "driver CPU, cores (all drivers)", total(c, "driver_cpu"), total(r, "driver_cpu"))
    )


def _cell(value: float | int | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) or (isinstance(value, float) and value >= 1000):
        return f"{value:,.0f}"
    return f"{value:g}"


def table(rows: Sequence[Row]) -> str:
    """A Markdown table (readable as plain text too)."""
    header = ("workload", "metric", "chatd", "relay", "chatd/relay", "target", "status")
    lines = [
        (
            row.workload,
            row.metric,
            _cell(row.chatd),
            _cell(row.relay),
            f"{row.ratio:g}x" if row.ratio is not None else "-",
            row.target or "-",
            row.status or "-",
        )
        for row in rows
    ]
    widths = [
        max(len(h), *(len(line[i]) for line in lines)) if lines else len(h)
        for i, h in enumerate(header)
    ]

    def fmt(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [fmt(line) for line in lines]
    return "\n".join(out)


def plot(results: dict[str, Any], path: Path) -> str | None:
    """Latency (p50, p99) against achieved load, per target; None, or why it could not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        return "matplotlib is not installed: pip install 'chatd[bench]'"
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    drawn = False
    for target, colour in (("chatd", "tab:blue"), ("relay", "tab:gray")):
        points = list(results.get("latency", {}).get(target, []))
        peak = results.get("1to1", {}).get(target)
        if peak:
            points.append({**peak, "fraction": 1.0})
        points = [p for p in points if p.get("p50") is not None]
        if not points:
            continue
        points.sort(key=lambda p: p["msgs_per_s"])
        xs = [p["msgs_per_s"] for p in points]
        for pct, style in (("p50", "o-"), ("p99", "s--")):
            ax.plot(xs, [p[pct] for p in points], style, color=colour, label=f"{target} {pct}")
        drawn = True
    if not drawn:
        plt.close(fig)
        return "no latency results to plot"
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))
    ax.set_xlabel("delivered messages/s (1:1, 50 pairs; rightmost point: closed loop at max)")
    ax.set_ylabel("send-to-receive latency, ms")
    ax.set_title("chatd vs the bare relay: latency against load")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return None
