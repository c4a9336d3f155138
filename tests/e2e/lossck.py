"""The message-loss checker: did every acknowledged message survive, exactly once?

A test records every message it tried to send (:class:`Sent`: who sent it, its ``client_id``,
whether the server acknowledged it and with which ``(conv, seq)``), then fetches the complete
history of every conversation involved and calls :func:`check`. Each sent message is
classified:

* ``stored``: acknowledged, and in history exactly once at the acknowledged ``(conv, seq)``;
* ``stored_unacked``: never acknowledged (the reply was lost in a crash) but stored once; fine;
* ``not_stored``: never acknowledged and not stored; fine (the client would retry it);
* ``lost``: acknowledged but not in history: a durability bug;
* ``duplicated``: in history more than once (same sender and ``client_id``);
* ``misplaced``: acknowledged with one ``(conv, seq)`` but stored at another;
* ``corrupted``: stored with a body other than the one sent.

A history message that no recorded send explains (same sender and ``client_id``) is
``unexpected``. System messages (``kind == "system"``) carry no ``client_id`` and are only
counted for the seq checks. Each history must hold ``seq`` 1, 2, 3, ... with no gap and no
repeat.

:meth:`Report.assert_ok` fails on lost, duplicated, misplaced or corrupted messages and on
any seq gap or repeat; on ``unexpected`` ones too when asked (``allow_unexpected=False``),
which a test that knows all traffic in its conversations should do.

This module is plain data in, plain data out: it never talks to a server, so it is
unit-tested on hand-made histories (``test_lossck.py``) and reused by chaos tests.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

CLASSES = (
    "stored",
    "stored_unacked",
    "not_stored",
    "lost",
    "duplicated",
    "misplaced",
    "corrupted",
)
FAILING = ("lost", "duplicated", "misplaced", "corrupted")


@dataclass(frozen=True, slots=True)
class Sent:
    """One send attempt as the client saw it.

    ``conv``/``seq`` are the acknowledged position (``None`` unless ``acked``). ``body``, when
    given, is compared with what history holds. ``sender`` may be ``None`` when every
    ``client_id`` in the test is unique across senders.
    """

    client_id: str
    acked: bool
    sender: str | None = None
    conv: str | None = None
    seq: int | None = None
    body: str | None = None


@dataclass
class Report:
    """The outcome of :func:`check`: each sent ``client_id`` under its class, plus problems."""

    classes: dict[str, list[str]] = field(default_factory=lambda: {c: [] for c in CLASSES})
    unexpected: list[tuple[str, int]] = field(default_factory=list)  # (conv, seq)
    gaps: dict[str, list[int]] = field(default_factory=dict)  # conv -> missing seqs
    repeats: dict[str, list[int]] = field(default_factory=dict)  # conv -> seqs seen twice+
    details: list[str] = field(default_factory=list)

    def count(self, cls: str) -> int:
        return len(self.classes[cls])

    def problems(self, allow_unexpected: bool = True) -> list[str]:
        found = [f"{cls}: {self.classes[cls]}" for cls in FAILING if self.classes[cls]]
        found += [f"seq gap in {conv}: missing {seqs}" for conv, seqs in self.gaps.items()]
        found += [f"seq repeated in {conv}: {seqs}" for conv, seqs in self.repeats.items()]
        if not allow_unexpected and self.unexpected:
            found.append(f"unexpected messages (conv, seq): {self.unexpected}")
        return found

    def ok(self, allow_unexpected: bool = True) -> bool:
        return not self.problems(allow_unexpected)

    def summary(self) -> str:
        counts = ", ".join(f"{cls}={self.count(cls)}" for cls in CLASSES)
        return f"{counts}, unexpected={len(self.unexpected)}"

    def assert_ok(self, allow_unexpected: bool = True) -> None:
        problems = self.problems(allow_unexpected)
        if problems:
            raise AssertionError(
                "message loss check failed ("
                + self.summary()
                + "):\n  "
                + "\n  ".join(problems + self.details[:50])
            )


def _seq_problems(seqs: Sequence[int]) -> tuple[list[int], list[int]]:
    counts = Counter(seqs)
    repeats = sorted(s for s, n in counts.items() if n > 1)
    top = max(counts, default=0)
    gaps = [s for s in range(1, top + 1) if s not in counts]
    return gaps, repeats


def check(sent: Iterable[Sent], histories: Mapping[str, Sequence[Mapping[str, Any]]]) -> Report:
    """Classify every sent message against complete histories (``conv -> messages``).

    Args:
        sent: every send attempt of the test, acknowledged or not.
        histories: for each conversation, all of its messages as the protocol's message
            objects (at least ``seq``, ``kind``, ``from``, ``client_id``, ``body``), in any order.

    Returns:
        A :class:`Report`; call :meth:`Report.assert_ok` to fail the test on loss.
    """
    report = Report()
    # (sender, client_id) -> [(conv, seq, body)], and client_id -> same (sender unknown)
    by_key: dict[tuple[str, str], list[tuple[str, int, Any]]] = defaultdict(list)
    by_cid: dict[str, list[tuple[str, int, Any]]] = defaultdict(list)
    for conv, messages in histories.items():
        gaps, repeats = _seq_problems([int(m["seq"]) for m in messages])
        if gaps:
            report.gaps[conv] = gaps
        if repeats:
            report.repeats[conv] = repeats
        for m in messages:
            if m.get("kind") == "system" or m.get("client_id") is None:
                continue
            where = (conv, int(m["seq"]), m.get("body"))
            by_key[(str(m.get("from")), str(m["client_id"]))].append(where)
            by_cid[str(m["client_id"])].append(where)

    explained: set[tuple[str, int]] = set()
    for s in sent:
        found = by_key.get((s.sender, s.client_id), []) if s.sender else by_cid.get(s.client_id, [])
        explained.update((conv, seq) for conv, seq, _ in found)
        cls = _classify(s, found, report)
        report.classes[cls].append(s.client_id)

    for conv, messages in histories.items():
        for m in messages:
            if m.get("kind") == "system" or m.get("client_id") is None:
                continue
            key = (conv, int(m["seq"]))
            if key not in explained:
                report.unexpected.append(key)
    report.unexpected.sort()
    return report


def _classify(s: Sent, found: list[tuple[str, int, Any]], report: Report) -> str:
    if len(found) > 1:
        report.details.append(f"{s.client_id} stored {len(found)} times at {found}")
        return "duplicated"
    if not found:
        if s.acked:
            report.details.append(f"{s.client_id} acknowledged at {s.conv}/{s.seq}, not stored")
            return "lost"
        return "not_stored"
    conv, seq, body = found[0]
    if s.acked and (s.conv, s.seq) != (conv, seq):
        report.details.append(f"{s.client_id} acknowledged at {s.conv}/{s.seq}, at {conv}/{seq}")
        return "misplaced"
    if s.body is not None and body != s.body:
        report.details.append(f"{s.client_id} body {body!r} != sent {s.body!r}")
        return "corrupted"
    return "stored" if s.acked else "stored_unacked"
