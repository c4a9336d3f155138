"""The log context, its filter and both formats, without a server (chatd.logs,
chatd.transport.request_id)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from chatd import logs
from chatd.transport.request_id import MAX_LENGTH, accept_request_id

TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (\w+) (\S+) \[([^\]]*)\] (.*)$")


class Captured:
    """A logger tree whose one handler is ``logs.make_handler`` writing into a string."""

    def __init__(self, log_format: str, name: str) -> None:
        self.stream = io.StringIO()
        self.handler = logs.make_handler(log_format, self.stream)
        self.root = logging.getLogger(name)
        self.root.addHandler(self.handler)
        self.root.setLevel(logging.DEBUG)
        self.root.propagate = False

    def lines(self) -> list[str]:
        return self.stream.getvalue().splitlines()

    def close(self) -> None:
        self.root.removeHandler(self.handler)
        self.root.propagate = True


@pytest.fixture(params=["text", "json"])
def captured(request: pytest.FixtureRequest) -> Iterator[Captured]:
    cap = Captured(request.param, f"logtest_{request.param}")
    try:
        yield cap
    finally:
        cap.close()


def fields(cap: Captured) -> list[dict[str, str]]:
    """Each line as ``{"message", "request_id", "conn", "user"}`` (absent keys left out)."""
    out = []
    for line in cap.lines():
        if line.startswith("{"):
            entry = json.loads(line)
            out.append({k: entry[k] for k in ("message", *logs.FIELDS) if k in entry})
            continue
        match = TEXT_LINE.match(line)
        assert match, f"a text line without its context field: {line!r}"
        entry = {"message": match[4]}
        if match[3] != "-":
            names = {"req": "request_id", "conn": "conn", "user": "user"}
            for pair in match[3].split(" "):
                key, _, value = pair.partition("=")
                entry[names[key]] = value
        out.append(entry)
    return out


def test_outside_any_context_a_line_says_so(captured: Captured) -> None:
    captured.root.info("starting")
    assert fields(captured) == [{"message": "starting"}]
    if not captured.lines()[0].startswith("{"):
        assert " [-] starting" in captured.lines()[0]


def test_bound_fields_are_on_every_line_until_the_block_ends(captured: Captured) -> None:
    log = captured.root
    with logs.bind(request_id="r1"):
        log.info("upgrade")
        with logs.bind(conn="c1"), logs.bind(user="alice"):
            log.warning("inside %s", "the socket")
        log.info("after the socket")
    log.info("outside")
    assert fields(captured) == [
        {"message": "upgrade", "request_id": "r1"},
        {"message": "inside the socket", "request_id": "r1", "conn": "c1", "user": "alice"},
        {"message": "after the socket", "request_id": "r1"},
        {"message": "outside"},
    ]
    assert logs.current() == logs.LogContext()


def test_a_library_logger_under_the_handler_gets_the_context_too(captured: Captured) -> None:
    # The filter is on the handler, so a child logger that has no filter of its own (as
    # aiohttp's loggers under the root logger) is covered.
    library = logging.getLogger(f"{captured.root.name}.aiohttp.server")
    with logs.bind(request_id="r2"):
        library.error("Error handling request")
    assert fields(captured) == [{"message": "Error handling request", "request_id": "r2"}]


def test_fields_given_explicitly_replace_the_whole_context(captured: Captured) -> None:
    with logs.bind(request_id="sender-req", conn="sender", user="alice"):
        captured.root.info("slow consumer", extra={"conn": "other", "user": "bob"})
    assert fields(captured) == [{"message": "slow consumer", "conn": "other", "user": "bob"}]


def test_exceptions_keep_their_traceback(captured: Captured) -> None:
    with logs.bind(conn="c9"):
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            captured.root.exception("request failed")
    text = captured.stream.getvalue()
    assert "RuntimeError: boom" in text
    first = captured.lines()[0]
    if first.startswith("{"):
        assert json.loads(first)["conn"] == "c9" and "boom" in json.loads(first)["exc"]
    else:
        assert "[conn=c9] request failed" in first


async def test_tasks_and_threads_keep_the_context_they_were_made_in(captured: Captured) -> None:
    log = captured.root
    release = asyncio.Event()

    async def request_task(name: str) -> None:
        await release.wait()
        log.info("%s done", name)

    with logs.bind(conn="c1", user="alice"):
        inside = asyncio.create_task(request_task("inside"))
        await asyncio.to_thread(log.info, "in a thread")
    outside = asyncio.create_task(request_task("outside"))
    release.set()  # both log only now, after the block has ended
    await asyncio.wait_for(asyncio.gather(inside, outside), 5)
    assert sorted(fields(captured), key=lambda entry: entry["message"]) == [
        {"message": "in a thread", "conn": "c1", "user": "alice"},
        {"message": "inside done", "conn": "c1", "user": "alice"},
        {"message": "outside done"},
    ]


@pytest.mark.parametrize(
    "supplied",
    ["abc-123", "0f8fad5b-d9cb-469f-a165-70867728950e", "nginx.req:42_x", "x" * MAX_LENGTH],
)
def test_a_sane_request_id_is_kept(supplied: str) -> None:
    assert accept_request_id(supplied) == supplied


@pytest.mark.parametrize(
    "supplied",
    [
        None,
        "",
        "x" * (MAX_LENGTH + 1),
        "abc\n2026-01-01 INFO forged line",
        "abc\r",
        "abc\n",  # $ in a regex would match before a final newline
        "a b",
        "a\tb",
        'a"b',
        "req=x] [user=admin",
        "caf\u00e9",
        "a\x00b",
    ],
)
def test_an_unsafe_or_missing_request_id_is_replaced(supplied: str | None) -> None:
    replaced = accept_request_id(supplied)
    assert replaced != supplied
    assert re.fullmatch(r"[0-9a-f]{12}", replaced)


def test_generated_request_ids_differ() -> None:
    assert len({accept_request_id(None) for _ in range(100)}) == 100
