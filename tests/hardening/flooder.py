"""A hostile client in its own process: one user sending ``send`` requests as fast as it can.

Run by ``test_limits.py`` as ``python -m tests.hardening.flooder URL TOKEN CONV SECONDS``, so
that the flood's client-side work does not share the test's event loop (whose timing it would
otherwise distort). It prints ``started`` once its first reply arrived, then, when done, one
JSON line: how many requests it sent, and how the replies were classified. Every request
carries an ``id``; the protocol promises exactly one reply per id, so ``missing`` (no reply)
and ``duplicates`` (two replies) must both be zero.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections import Counter
from typing import Any

import aiohttp

WINDOW = 512  # requests written but not answered yet; the server itself reads 64 at a time
DRAIN_TIMEOUT = 15.0


async def flood(url: str, token: str, conv: str, seconds: float) -> dict[str, Any]:
    sent = 0
    replies: Counter[str] = Counter()
    answered: set[str] = set()
    outcomes: Counter[str] = Counter()
    bad_retry_after: list[Any] = []
    others: list[dict[str, Any]] = []
    room = asyncio.Semaphore(WINDOW)
    first = asyncio.Event()
    all_answered = asyncio.Event()
    done_sending = False
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(url, max_msg_size=0, heartbeat=None)
        await ws.send_str(json.dumps({"type": "hello", "id": "hello", "token": token}))
        hello = json.loads((await asyncio.wait_for(ws.receive(), 5)).data)
        if hello.get("type") != "ok":
            return {"error": f"hello refused: {hello}"}

        async def read() -> None:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                frame = json.loads(msg.data)
                rid = frame.get("id")
                if frame.get("type") not in ("ok", "error"):
                    continue  # events (our own conversation's, say)
                if not isinstance(rid, str):
                    others.append(frame)
                    continue
                replies[rid] += 1
                if replies[rid] > 1:
                    continue
                answered.add(rid)
                room.release()
                if done_sending and len(answered) >= sent:
                    all_answered.set()
                first.set()
                if frame["type"] == "ok":
                    outcomes["ok"] += 1
                elif frame.get("code") == "rate_limited":
                    outcomes["rate_limited"] += 1
                    retry = frame.get("retry_after")
                    if not isinstance(retry, int | float) or isinstance(retry, bool) or retry <= 0:
                        bad_retry_after.append(retry)
                else:
                    outcomes["other"] += 1
                    if len(others) < 20:
                        others.append(frame)

        reader = asyncio.create_task(read())
        started = False
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await room.acquire()
            sent += 1
            frame = {
                "type": "send",
                "id": f"f{sent}",
                "conv": conv,
                "client_id": uuid.uuid4().hex,
                "body": "flood",
            }
            await ws.send_str(json.dumps(frame))
            if not started and first.is_set():
                print("started", flush=True)
                started = True
        done_sending = True
        if len(answered) >= sent:
            all_answered.set()
        try:
            await asyncio.wait_for(all_answered.wait(), DRAIN_TIMEOUT)
        except TimeoutError:
            pass  # reported as "missing"
        await ws.close()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    return {
        "sent": sent,
        "answered": len(answered),
        "missing": sent - len(answered),
        "duplicates": sum(1 for n in replies.values() if n > 1),
        "outcomes": dict(outcomes),
        "bad_retry_after": bad_retry_after[:20],
        "others": others[:20],
        "seconds": seconds,
    }


def main() -> None:
    # The flood is meant to load the server, not the machine's other client (the test measuring
    # latency, on the same few cores): it yields the CPU to it.
    os.nice(10)
    url, token, conv, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    result = asyncio.run(flood(url, token, conv, seconds))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
