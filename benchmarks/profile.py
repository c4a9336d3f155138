"""``--profile``: sample chatd with py-spy during a measured window and name the hot spots.

py-spy is not a dependency (``pip install py-spy`` to use this). The raw samples are kept next
to the results JSON (``flamegraph.pl`` or speedscope can draw them); the summary printed is the
share of samples per thread and the functions where each thread spends its own time.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

PY_SPY_RATE = 200  # samples per second


def py_spy() -> str | None:
    found = shutil.which("py-spy")
    if found:
        return found
    candidate = Path(sys.executable).parent / "py-spy"
    return str(candidate) if candidate.exists() else None


async def record(pid: int, seconds: float, out: Path) -> asyncio.subprocess.Process | None:
    """Start sampling ``pid`` for ``seconds`` into ``out`` (raw collapsed stacks)."""
    binary = py_spy()
    if binary is None:
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    return await asyncio.create_subprocess_exec(
        binary,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, int(seconds))),
        "--rate",
        str(PY_SPY_RATE),
        "--format",
        "raw",
        "--output",
        str(out),
        "--nonblocking",
        "--threads",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


def summarize(path: Path, top: int = 12) -> dict[str, Any]:
    """Per thread: its share of samples and its ``top`` functions by own (self) time."""
    threads: Counter[str] = Counter()
    own: dict[str, Counter[str]] = {}
    roles: dict[str, Counter[str]] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        # With --threads the first frame is "thread (<tid>): <name>".
        thread = frames[0].split(": ", 1)[-1] if frames[0].startswith("thread (") else "?"
        thread = thread.split(":", 1)[0]  # "chatd-sqlite-writer:/path/to/db" -> the name
        total += count
        threads[thread] += count
        own.setdefault(thread, Counter())[_short(frames[-1])] += count
        role = next((f.split(" (")[0] for f in frames if "chatd/" in f), None)
        if role is not None:
            roles.setdefault(thread, Counter())[role] += count
    summary: dict[str, Any] = {"samples": total, "threads": {}}
    for thread, count in threads.most_common():
        name = thread
        if thread != "MainThread" and thread in roles:
            name = f"{thread} ({roles[thread].most_common(1)[0][0]})"
        summary["threads"][name] = {
            "share": round(count / total, 3) if total else 0,
            "self": [(fn, round(n / count, 3)) for fn, n in own[thread].most_common(top)],
        }
    return summary


def _short(frame: str) -> str:
    """``func (path/to/module.py:123)`` -> ``func (module.py:123)``."""
    match = re.match(r"(.*) \((.*?)([^/]+):(\d+)\)$", frame.strip())
    if not match:
        return frame.strip()
    return f"{match.group(1)} ({match.group(3)}:{match.group(4)})"


def format_summary(label: str, summary: dict[str, Any]) -> list[str]:
    lines = [f"    profile of {label} ({summary['samples']} samples):"]
    for thread, info in summary["threads"].items():
        lines.append(f"      {thread}: {info['share']:.0%} of samples; own time:")
        lines += [f"        {share:6.1%}  {name}" for name, share in info["self"]]
    return lines
