"""``TimedStore``: every Store method passes its arguments, result and exception through
unchanged, and every call, failed or not, is timed (and a failed one counted by code)."""

from __future__ import annotations

import asyncio
import inspect
from collections import Counter
from typing import Any

import pytest

from chatd.errors import NotFound, Unavailable
from chatd.metrics import Histogram, Metrics
from chatd.models import NewMessage
from chatd.store.base import Store
from chatd.store.memory import MemoryStore
from chatd.store.timed import TIMED, TimedStore


def public_methods(cls: type) -> list[str]:
    return sorted(
        name
        for name, value in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_")
    )


class Recorder(Store):
    """A store whose every method records its call and returns (or raises) what it is told."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.answer: dict[str, Any] = {}
        self.raise_: dict[str, BaseException] = {}
        self.gate: asyncio.Event | None = None


def _recording(name: str) -> Any:
    async def method(self: Recorder, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((name, args, kwargs))
        if self.gate is not None:
            await self.gate.wait()
        if name in self.raise_:
            raise self.raise_[name]
        return self.answer.get(name)

    method.__name__ = name
    return method


for _name in public_methods(Store):
    setattr(Recorder, _name, _recording(_name))
Recorder.__abstractmethods__ = frozenset()


def arguments(name: str) -> tuple[tuple[object, ...], dict[str, object]]:
    """One distinct object per parameter, positional or keyword as ``Store`` declares it."""
    args: list[object] = []
    kwargs: dict[str, object] = {}
    for param in list(inspect.signature(getattr(Store, name)).parameters.values())[1:]:
        if param.kind is param.KEYWORD_ONLY:
            kwargs[param.name] = object()
        else:
            args.append(object())
    return tuple(args), kwargs


def test_every_store_method_is_overridden_with_the_same_signature() -> None:
    # A method inherited from Store instead of forwarded would silently skip the backend.
    assert public_methods(TimedStore) == public_methods(Store)
    for name in public_methods(Store):
        assert name in TimedStore.__dict__, name
        timed, declared = getattr(TimedStore, name), getattr(Store, name)
        assert inspect.signature(timed) == inspect.signature(declared), name
    assert set(TIMED) == set(public_methods(Store)) - {"start", "close"}


@pytest.mark.parametrize("name", public_methods(Store))
async def test_arguments_and_result_pass_through_and_the_call_is_timed(name: str) -> None:
    inner = Recorder()
    result = object()
    inner.answer[name] = result
    timed = TimedStore(inner)
    args, kwargs = arguments(name)
    # A method declared to return None returns None whatever the backend hands back.
    returns_none = inspect.signature(getattr(Store, name)).return_annotation == "None"
    assert await getattr(timed, name)(*args, **kwargs) is (None if returns_none else result)
    assert inner.calls == [(name, args, kwargs)]
    if name in TIMED:
        assert timed.seconds[name].total == 1
        assert timed.seconds[name].sum >= 0
    assert sum(h.total for h in timed.seconds.values()) == (1 if name in TIMED else 0)
    assert not timed.errors


async def test_a_failing_call_raises_the_same_exception_and_is_timed_and_counted() -> None:
    inner = Recorder()
    down = Unavailable("store down")
    inner.raise_["append_message"] = down
    broken = RuntimeError("bug")
    inner.raise_["history"] = broken
    timed = TimedStore(inner)
    with pytest.raises(Unavailable) as raised:
        await timed.append_message(*arguments("append_message")[0])
    assert raised.value is down
    with pytest.raises(RuntimeError) as raised_bug:
        await timed.history("c", before=None, after=None, limit=1)
    assert raised_bug.value is broken
    assert timed.seconds["append_message"].total == 1
    assert timed.seconds["history"].total == 1
    assert timed.errors == Counter(
        {("append_message", "unavailable"): 1, ("history", "internal"): 1}
    )


async def test_a_cancelled_call_is_timed_but_not_counted_as_an_error() -> None:
    inner = Recorder()
    inner.gate = asyncio.Event()
    timed = TimedStore(inner)
    call = asyncio.ensure_future(timed.get_user("alice"))
    await asyncio.sleep(0)
    assert inner.calls
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert timed.seconds["get_user"].total == 1
    assert not timed.errors


async def test_shared_histograms_fill_metrics_and_render_per_method() -> None:
    metrics = Metrics()
    store = TimedStore(MemoryStore(), metrics.store_seconds, metrics.store_errors)
    await store.start()
    try:
        await store.create_user("alice", "h", 1)
        await store.create_user("bob", "h", 1)
        conv, _ = await store.get_or_create_direct("alice", "bob", "c1", 1)
        for n in range(3):
            await store.append_message(NewMessage(conv.conv, "alice", f"m{n}", 2, body="hi"))
        with pytest.raises(NotFound):
            await store.append_message(NewMessage(conv.conv, "carol", "m9", 2, body="hi"))
    finally:
        await store.close()
    assert metrics.store_seconds["append_message"].total == 4
    text = metrics.render()
    assert 'chatd_store_seconds_bucket{op="append_message",le="+Inf"} 4\n' in text
    assert 'chatd_store_seconds_count{op="append_message"} 4\n' in text
    assert 'chatd_store_seconds_count{op="create_user"} 2\n' in text
    assert 'chatd_store_errors_total{op="append_message",code="not_found"} 1\n' in text
    assert 'op="list_contacts"' not in text  # a method never called is not listed
    assert "# TYPE chatd_store_seconds histogram\n" in text
    # the bus histograms are there (empty) even on a one-process server
    assert "chatd_bus_publish_seconds_count 0\n" in text
    assert "chatd_bus_locate_seconds_count 0\n" in text


def test_histogram_buckets_are_cumulative_and_match_the_count() -> None:
    h = Histogram()
    for seconds in (0.0001, 0.003, 0.003, 7.0):
        h.observe(seconds)
    lines = list(h.lines("x", 'op="a"'))
    assert lines[0] == 'x_bucket{op="a",le="0.0005"} 1'
    assert 'x_bucket{op="a",le="0.005"} 3' in lines
    assert lines[-3] == 'x_bucket{op="a",le="+Inf"} 4'
    assert lines[-1] == 'x_count{op="a"} 4'
