"""``make bench`` / ``python -m benchmarks.run``: every workload, chatd against the bare relay.

Starts the servers itself (a fresh data directory per workload), runs the drivers, prints a
table with chatd's figures, the relay's and the ratio, writes ``benchmarks/results/<time>.json``
and with ``--plot`` draws latency against offered load into ``docs/``. Every server and driver
it starts is stopped by pid at the end, also on an error or Ctrl-C.

Examples::

    make bench
    make bench BENCH_ARGS="--only 1to1,fanout --duration 10"
    python -m benchmarks.run --only idle --idle 19000
    python -m benchmarks.run --quick          # a one-minute smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from benchmarks.report import build_rows, plot, table
from benchmarks.servers import ROOT, BenchError, Interrupted, Processes
from benchmarks.workloads import (
    TARGETS,
    WORKLOAD_FUNCS,
    WORKLOADS,
    Bench,
    Options,
    one_to_one,
)

RESULTS_DIR = ROOT / "benchmarks" / "results"
PLOT_PATH = ROOT / "docs" / "benchmarks-latency.png"


def _list(kind: type, text: str) -> tuple[Any, ...]:
    try:
        return tuple(kind(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma list of {kind.__name__}: {text!r}")


def _names(allowed: tuple[str, ...]) -> Any:
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(part.strip() for part in text.split(",") if part.strip())
        unknown = [n for n in names if n not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(unknown) or 'empty list'}; choose from {', '.join(allowed)}"
            )
        return names

    return parse


def parser() -> argparse.ArgumentParser:
    d = Options()
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="chatd's benchmarks, with the bare relay as the baseline in the same run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--only", type=_names(WORKLOADS), default=WORKLOADS, help="comma list of workloads to run"
    )
    p.add_argument("--skip", type=_names(WORKLOADS), default=(), help="workloads to leave out")
    p.add_argument("--targets", type=_names(TARGETS), default=TARGETS, help="servers to measure")
    p.add_argument(
        "--quick",
        action="store_true",
        help="short smoke run: 3 s windows, small groups, 500 idle, 100k history",
    )
    p.add_argument("--duration", type=float, default=d.duration, help="measured seconds per phase")
    p.add_argument("--warmup", type=float, default=d.warmup, help="warm-up seconds per phase")
    p.add_argument("--pairs", type=int, default=d.pairs, help="1:1 sender/receiver pairs")
    p.add_argument("--window", type=int, default=d.window, help="1:1 messages in flight per sender")
    p.add_argument(
        "--driver-procs",
        type=int,
        default=d.driver_procs,
        help="driver processes for the 1:1 workloads",
    )
    p.add_argument(
        "--rates",
        type=lambda t: _list(float, t),
        default=d.rates,
        help="offered rates for the latency workload, as fractions of the max",
    )
    p.add_argument(
        "--fanout-sizes",
        type=lambda t: _list(int, t),
        default=d.fanout_sizes,
        help="group sizes for fan-out",
    )
    p.add_argument(
        "--fanout-window",
        type=int,
        default=d.fanout_window,
        help="fan-out messages in flight (to the last member)",
    )
    p.add_argument(
        "--fanout-procs",
        type=int,
        default=d.fanout_procs,
        help="receiver processes per group (0: one per 400 members)",
    )
    p.add_argument("--idle", type=int, default=d.idle, help="idle connections (up to ~19000)")
    p.add_argument(
        "--idle-per-proc",
        type=int,
        default=d.idle_per_proc,
        help="idle connections per driver process",
    )
    p.add_argument(
        "--idle-heartbeat",
        type=float,
        default=d.idle_heartbeat,
        help="server heartbeat during the idle workload, scaled to 25 s in the figures "
        "(0: N/1000 s, within 2..25 s)",
    )
    p.add_argument(
        "--idle-window",
        type=float,
        default=d.idle_window,
        help="seconds over which idle CPU is measured",
    )
    p.add_argument(
        "--history-messages",
        type=int,
        default=d.history_messages,
        help="messages in the history conversation",
    )
    p.add_argument("--history-sockets", type=int, default=d.history_sockets)
    p.add_argument(
        "--history-window",
        type=int,
        default=d.history_window,
        help="history requests in flight per socket",
    )
    p.add_argument(
        "--provision",
        choices=("store", "http"),
        default=d.provision,
        help="write users straight into chatd's store, or register over HTTP",
    )
    p.add_argument("--redis", default=d.redis, help="Redis for the across-processes workload")
    p.add_argument("--plot", action="store_true", help="draw latency against offered load")
    p.add_argument(
        "--profile",
        action="store_true",
        help="sample chatd with py-spy in each measured window and print its hot spots",
    )
    p.add_argument("--plot-path", type=Path, default=PLOT_PATH, help="where --plot draws")
    p.add_argument(
        "--json",
        type=Path,
        default=None,
        help="where to write the results (default benchmarks/results/<time>.json)",
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, data)")
    return p


def options_from(args: argparse.Namespace) -> Options:
    opts = Options(
        duration=args.duration,
        warmup=args.warmup,
        pairs=args.pairs,
        window=args.window,
        driver_procs=args.driver_procs,
        rates=args.rates,
        fanout_sizes=args.fanout_sizes,
        fanout_window=args.fanout_window,
        fanout_procs=args.fanout_procs,
        idle=args.idle,
        idle_per_proc=args.idle_per_proc,
        idle_heartbeat=args.idle_heartbeat,
        idle_window=args.idle_window,
        history_messages=args.history_messages,
        history_sockets=args.history_sockets,
        history_window=args.history_window,
        redis=args.redis,
        provision=args.provision,
        targets=args.targets,
        profile=args.profile,
    )
    if args.quick:
        opts.duration = min(opts.duration, 3.0)
        opts.warmup = min(opts.warmup, 1.0)
        opts.fanout_sizes = tuple(min(s, 300) for s in opts.fanout_sizes)
        opts.idle = min(opts.idle, 500)
        opts.idle_window = min(opts.idle_window, 4.0)
        opts.idle_heartbeat = opts.idle_heartbeat or 1.0
        opts.history_messages = min(opts.history_messages, 100_000)
    problems = []
    if opts.pairs < 1 or opts.window < 1 or opts.driver_procs < 1:
        problems.append("--pairs, --window and --driver-procs must be at least 1")
    if opts.duration <= 0 or opts.warmup < 0:
        problems.append("--duration must be positive and --warmup not negative")
    if any(not 0 < r < 1.5 for r in opts.rates):
        problems.append("--rates are fractions of the maximum, e.g. 0.25,0.5")
    if any(s < 2 for s in opts.fanout_sizes):
        problems.append("--fanout-sizes must be at least 2")
    if opts.idle < 1 or opts.idle_per_proc < 1:
        problems.append("--idle and --idle-per-proc must be at least 1")
    if opts.history_messages < 101:
        problems.append("--history-messages must be more than 100")
    if problems:
        raise BenchError("; ".join(problems))
    return opts


async def run_workloads(bench: Bench, selected: tuple[str, ...]) -> list[str]:
    """Run each selected workload; a failing one is recorded and the others still run."""
    failures = []
    plan: list[tuple[str, Any]] = []
    if "1to1" in selected or "latency" in selected:
        plan.append(("1to1", lambda b: one_to_one(b, "latency" in selected)))
    plan += [
        (name, WORKLOAD_FUNCS[name])
        for name in WORKLOADS
        if name in WORKLOAD_FUNCS and name in selected
    ]
    for name, func in plan:
        bench.procs.check()
        started = time.monotonic()
        bench.log(f"[{name}]")
        try:
            await func(bench)
        except BenchError as exc:
            failures.append(name)
            bench.results.setdefault(name, {})["error"] = str(exc)
            bench.log(f"  FAILED: {exc}")
        bench.log(f"  ({time.monotonic() - started:.0f} s)")
    return failures


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            model = next(
                (line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), ""
            )
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": platform.node(),
    }


async def amain(args: argparse.Namespace, procs: Processes, workdir: Path) -> int:
    opts = options_from(args)
    selected = tuple(w for w in args.only if w not in args.skip)

    def log(text: str) -> None:
        print(text, flush=True)

    bench = Bench(opts, procs, workdir, log)
    load_before = os.getloadavg()
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()

    def interrupt() -> None:
        procs.interrupted = True
        if main_task is not None:
            main_task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, interrupt)
    started = datetime.now(UTC)
    if opts.profile:
        bench.profile_dir = RESULTS_DIR / f"{started:%Y-%m-%dT%H-%M-%SZ}-profiles"
    t0 = time.monotonic()
    log(
        f"chatd benchmarks, {started:%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, "
        f"workloads {','.join(selected)}, targets {','.join(opts.targets)}; work dir {workdir}"
    )
    try:
        failures = await run_workloads(bench, selected)
    finally:
        await procs.stop_all()
    elapsed = time.monotonic() - t0
    rows = build_rows(bench.results)
    log("")
    log(table(rows))
    log(
        f"\n(total {elapsed:.0f} s; load average before {load_before[0]:.2f}, "
        f"after {os.getloadavg()[0]:.2f})"
    )
    document = {
        "date": started.isoformat(timespec="seconds"),
        "elapsed_s": round(elapsed, 1),
        "command": " ".join(["python -m benchmarks.run", *sys.argv[1:]]),
        # Other work on the machine takes CPU from the servers and the drivers alike.
        "machine": {**machine(), "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "options": asdict(opts),
        "workloads": bench.results,
        "rows": [row.as_json() for row in rows],
    }
    path = args.json or RESULTS_DIR / f"{started:%Y-%m-%dT%H-%M-%SZ}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    log(f"results: {path}")
    if args.plot:
        problem = plot(bench.results, args.plot_path)
        log(f"plot: {args.plot_path}" if problem is None else f"plot not drawn: {problem}")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    procs = Processes()
    workdir = Path(tempfile.mkdtemp(prefix="chatd-bench-"))
    try:
        import uvloop  # noqa: F401  (the drivers and servers use it; the orchestrator idles)
    except ImportError:
        print("note: uvloop is not installed; drivers fall back to asyncio", file=sys.stderr)
    code = 1
    try:
        code = asyncio.run(amain(args, procs, workdir))
    except BenchError as exc:
        print(f"benchmark error: {exc}", file=sys.stderr)
    except (KeyboardInterrupt, Interrupted, asyncio.CancelledError):
        print("interrupted: stopping every server and driver", file=sys.stderr)
        code = 130
    finally:
        procs.stop_all_sync()
        if args.keep or code not in (0, 130):
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
