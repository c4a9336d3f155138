"""Unit tests of the message-loss checker on hand-made histories (no server needed)."""

from __future__ import annotations

from typing import Any

import pytest

from .lossck import Sent, check


def msg(
    seq: int, cid: str | None, sender: str = "alice", body: str = "b", **kw: Any
) -> dict[str, Any]:
    return {"seq": seq, "client_id": cid, "from": sender, "kind": "text", "body": body, **kw}


def system(seq: int) -> dict[str, Any]:
    return {"seq": seq, "client_id": None, "from": "alice", "kind": "system", "event": {}}


def test_all_acknowledged_and_stored() -> None:
    sent = [Sent("c1", True, "alice", "x", 2, "b"), Sent("c2", True, "bob", "x", 3)]
    report = check(sent, {"x": [system(1), msg(2, "c1"), msg(3, "c2", "bob")]})
    assert report.classes["stored"] == ["c1", "c2"]
    report.assert_ok(allow_unexpected=False)


def test_history_order_does_not_matter() -> None:
    sent = [Sent("c1", True, "alice", "x", 1), Sent("c2", True, "alice", "x", 2)]
    check(sent, {"x": [msg(2, "c2"), msg(1, "c1")]}).assert_ok(allow_unexpected=False)


def test_acknowledged_but_missing_is_lost() -> None:
    sent = [Sent("c1", True, "alice", "x", 1), Sent("c2", True, "alice", "x", 2)]
    report = check(sent, {"x": [msg(1, "c1")]})
    assert report.classes["lost"] == ["c2"]
    with pytest.raises(AssertionError, match="lost"):
        report.assert_ok()


def test_unacknowledged_outcomes_are_fine() -> None:
    sent = [Sent("c1", False, "alice"), Sent("c2", False, "alice")]
    report = check(sent, {"x": [msg(1, "c1")]})
    assert report.classes["stored_unacked"] == ["c1"]
    assert report.classes["not_stored"] == ["c2"]
    report.assert_ok(allow_unexpected=False)


def test_stored_twice_is_duplicated() -> None:
    sent = [Sent("c1", True, "alice", "x", 1)]
    report = check(sent, {"x": [msg(1, "c1"), msg(2, "c1")]})
    assert report.classes["duplicated"] == ["c1"]
    with pytest.raises(AssertionError, match="duplicated"):
        report.assert_ok()


def test_duplicate_across_conversations_is_caught() -> None:
    sent = [Sent("c1", True, "alice", "x", 1)]
    report = check(sent, {"x": [msg(1, "c1")], "y": [msg(1, "c1")]})
    assert report.classes["duplicated"] == ["c1"]
    assert not report.ok()


def test_unacknowledged_stored_twice_is_still_duplicated() -> None:
    report = check([Sent("c1", False, "alice")], {"x": [msg(1, "c1"), msg(2, "c1")]})
    assert report.classes["duplicated"] == ["c1"]
    assert not report.ok()


def test_seq_gap_fails() -> None:
    sent = [Sent("c1", True, "alice", "x", 1), Sent("c3", True, "alice", "x", 3)]
    report = check(sent, {"x": [msg(1, "c1"), msg(3, "c3")]})
    assert report.gaps == {"x": [2]}
    with pytest.raises(AssertionError, match="gap"):
        report.assert_ok()


def test_history_not_starting_at_one_is_a_gap() -> None:
    report = check([Sent("c1", True, "alice", "x", 2)], {"x": [msg(2, "c1")]})
    assert report.gaps == {"x": [1]}
    assert not report.ok()


def test_repeated_seq_fails() -> None:
    sent = [Sent("c1", True, "alice", "x", 1), Sent("c2", True, "alice", "x", 1)]
    report = check(sent, {"x": [msg(1, "c1"), msg(1, "c2")]})
    assert report.repeats == {"x": [1]}
    assert not report.ok()


def test_acknowledged_at_another_position_is_misplaced() -> None:
    report = check([Sent("c1", True, "alice", "x", 2)], {"x": [msg(1, "c1"), msg(2, "other")]})
    assert report.classes["misplaced"] == ["c1"]
    assert not report.ok()


def test_other_body_is_corrupted() -> None:
    report = check(
        [Sent("c1", True, "alice", "x", 1, "hello")], {"x": [msg(1, "c1", body="hellp")]}
    )
    assert report.classes["corrupted"] == ["c1"]
    assert not report.ok()


def test_unexpected_messages_are_reported_and_fail_only_when_asked() -> None:
    report = check([Sent("c1", True, "alice", "x", 1)], {"x": [msg(1, "c1"), msg(2, "zz")]})
    assert report.unexpected == [("x", 2)]
    report.assert_ok(allow_unexpected=True)
    with pytest.raises(AssertionError, match="unexpected"):
        report.assert_ok(allow_unexpected=False)


def test_same_client_id_from_two_senders_are_two_messages() -> None:
    sent = [Sent("c1", True, "alice", "x", 1), Sent("c1", True, "bob", "x", 2)]
    report = check(sent, {"x": [msg(1, "c1"), msg(2, "c1", "bob")]})
    assert report.classes["stored"] == ["c1", "c1"]
    report.assert_ok(allow_unexpected=False)


def test_sender_unknown_matches_by_client_id() -> None:
    report = check([Sent("c9", True, None, "x", 1)], {"x": [msg(1, "c9", "carol")]})
    assert report.classes["stored"] == ["c9"]


def test_system_messages_count_for_seq_only() -> None:
    report = check([Sent("c2", True, "alice", "x", 2)], {"x": [system(1), msg(2, "c2")]})
    report.assert_ok(allow_unexpected=False)
    assert check([], {"x": [system(1), system(3)]}).gaps == {"x": [2]}


def test_summary_names_every_class() -> None:
    summary = check([], {}).summary()
    for cls in ("stored", "lost", "duplicated", "unexpected"):
        assert cls in summary
