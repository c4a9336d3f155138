"""The store contract: every backend (see ``conftest.py``) must pass every test here."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from typing import Any, TypeVar

import pytest

from chatd.errors import BadRequest, Conflict, NotFound, StaleVersion
from chatd.models import (
    AppendResult,
    GroupChange,
    MediaItem,
    NewMessage,
    PushSubscription,
    Session,
)
from chatd.store import Store

T = TypeVar("T")
T0 = 1_764_316_800_000  # a fixed clock: 2025-11-28 08:00 UTC, in milliseconds


async def bounded(aw: Awaitable[T], seconds: float = 30) -> T:
    return await asyncio.wait_for(aw, seconds)


def msg(
    conv: str,
    sender: str,
    body: str | None = "hi",
    *,
    client_id: str | None = None,
    ts: int = T0,
    media: tuple[MediaItem, ...] = (),
    kind: Any = "text",
    event: dict[str, Any] | None = None,
    reply_to: int | None = None,
) -> NewMessage:
    return NewMessage(
        conv=conv,
        sender=sender,
        msg_id=str(uuid.uuid4().int >> 65),
        ts=ts,
        kind=kind,
        client_id=client_id if client_id is not None else uuid.uuid4().hex,
        body=body,
        media=media,
        reply_to=reply_to,
        event=event,
    )


def system(conv: str, actor: str, action: str, ts: int = T0, **event: Any) -> NewMessage:
    return NewMessage(
        conv=conv,
        sender=actor,
        msg_id=str(uuid.uuid4().int >> 65),
        ts=ts,
        kind="system",
        event={"action": action, **event},
    )


async def users(store: Store, *names: str) -> None:
    for name in names:
        await store.create_user(name, f"hash-{name}", T0)


async def direct(store: Store, a: str = "alice", b: str = "bob") -> str:
    conv, _ = await store.get_or_create_direct(a, b, f"d-{uuid.uuid4().hex[:10]}", T0)
    return conv.conv


async def group(store: Store, owner: str = "alice", *others: str, title: str = "ops") -> str:
    conv_id = f"g-{uuid.uuid4().hex[:10]}"
    members = [(owner, "owner"), *((u, "member") for u in others)]
    await store.create_group(
        conv_id, title, members, system(conv_id, owner, "create", users=list(others))
    )
    return conv_id


# -- messages ------------------------------------------------------------------------------


async def test_concurrent_appends_get_gapless_seqs(store: Store) -> None:
    conv = await direct(store)
    sent = [msg(conv, "alice" if i % 2 else "bob", f"m{i}") for i in range(200)]
    results = await bounded(asyncio.gather(*(store.append_message(m) for m in sent)))
    assert sorted(r.message.seq for r in results) == list(range(1, 201))
    assert not any(r.duplicate for r in results)
    assert all(set(r.members) == {"alice", "bob"} for r in results)
    page, more = await store.history(conv, before=None, after=None, limit=500)
    assert [m.seq for m in page] == list(range(1, 201))
    assert not more
    by_id = {r.message.msg_id: r.message.seq for r in results}
    assert all(by_id[m.msg_id] == m.seq for m in page)
    conversation = await store.get_conversation(conv)
    assert conversation is not None and conversation.last_seq == 200


async def test_appended_message_round_trips(store: Store) -> None:
    conv = await direct(store)
    item = MediaItem("m1", "alice", "image/png", 10, "a.png", "ab" * 32, T0, 4, 3, "image/jpeg")
    await store.create_media(item)
    new = msg(conv, "alice", "look", media=(item,), reply_to=None, ts=T0 + 5)
    first = await store.append_message(new)
    reply = await store.append_message(msg(conv, "bob", "nice", reply_to=1, ts=T0 + 6))
    stored = first.message
    assert (stored.conv, stored.seq, stored.msg_id, stored.kind) == (conv, 1, new.msg_id, "text")
    assert (stored.sender, stored.client_id, stored.ts, stored.body) == (
        "alice",
        new.client_id,
        T0 + 5,
        "look",
    )
    assert stored.media == (item,)
    assert reply.message.reply_to == 1
    page, _ = await store.history(conv, before=None, after=None, limit=10)
    assert page == [first.message, reply.message]


async def test_client_id_makes_a_retry_idempotent(store: Store) -> None:
    conv = await direct(store)
    first = await store.append_message(msg(conv, "alice", "once", client_id="c1"))
    again = await store.append_message(msg(conv, "alice", "once", client_id="c1"))
    assert not first.duplicate and again.duplicate
    assert again.message == first.message
    assert set(again.members) == {"alice", "bob"}
    # The same client_id from another sender is another message.
    other = await store.append_message(msg(conv, "bob", "mine", client_id="c1"))
    assert not other.duplicate and other.message.seq == 2
    page, _ = await store.history(conv, before=None, after=None, limit=10)
    assert [m.seq for m in page] == [1, 2]


async def test_concurrent_retries_store_one_message(store: Store) -> None:
    conv = await direct(store)
    await store.append_message(msg(conv, "bob", "before"))
    tries = [msg(conv, "alice", "x", client_id="same") for _ in range(10)]
    results: list[AppendResult] = await bounded(
        asyncio.gather(*(store.append_message(m) for m in tries))
    )
    originals = [r for r in results if not r.duplicate]
    assert len(originals) == 1
    assert {(r.message.seq, r.message.msg_id) for r in results} == {
        (2, originals[0].message.msg_id)
    }
    page, _ = await store.history(conv, before=None, after=None, limit=10)
    assert [m.seq for m in page] == [1, 2]


async def test_append_by_a_non_member_is_not_found(store: Store) -> None:
    conv = await direct(store)
    with pytest.raises(NotFound):
        await store.append_message(msg(conv, "carol", "let me in"))
    with pytest.raises(NotFound):
        await store.append_message(msg("no-such-conv", "alice", "hello?"))
    page, _ = await store.history(conv, before=None, after=None, limit=10)
    assert page == []


async def test_history_pages_both_ways(store: Store) -> None:
    conv = await direct(store)
    for i in range(10):
        await store.append_message(msg(conv, "alice", f"m{i + 1}"))

    async def seqs(**kw: Any) -> tuple[list[int], bool]:
        page, more = await store.history(conv, **kw)
        return [m.seq for m in page], more

    assert await seqs(before=None, after=None, limit=3) == ([8, 9, 10], True)
    assert await seqs(before=None, after=None, limit=10) == (list(range(1, 11)), False)
    assert await seqs(before=None, after=None, limit=50) == (list(range(1, 11)), False)
    assert await seqs(before=8, after=None, limit=3) == ([5, 6, 7], True)
    assert await seqs(before=4, after=None, limit=3) == ([1, 2, 3], False)
    assert await seqs(before=3, after=None, limit=5) == ([1, 2], False)
    assert await seqs(before=1, after=None, limit=5) == ([], False)
    assert await seqs(before=None, after=0, limit=3) == ([1, 2, 3], True)
    assert await seqs(before=None, after=6, limit=3) == ([7, 8, 9], True)
    assert await seqs(before=None, after=7, limit=3) == ([8, 9, 10], False)
    assert await seqs(before=None, after=10, limit=3) == ([], False)
    page, _ = await store.history(conv, before=None, after=None, limit=2)
    assert [m.body for m in page] == ["m9", "m10"]
    assert await store.history("no-such-conv", before=None, after=None, limit=5) == ([], False)


# -- markers -------------------------------------------------------------------------------


async def test_markers_are_monotonic_and_read_implies_delivered(store: Store) -> None:
    conv = await direct(store)
    for _ in range(5):
        await store.append_message(msg(conv, "alice"))
    bob = await store.set_marker(conv, "bob", "delivered", 3)
    assert bob is not None and (bob.delivered, bob.read) == (3, 0)
    assert await store.set_marker(conv, "bob", "delivered", 2) is None
    bob = await store.set_marker(conv, "bob", "read", 4)
    assert bob is not None and (bob.delivered, bob.read) == (4, 4)
    assert await store.set_marker(conv, "bob", "read", 4) is None
    assert await store.set_marker(conv, "bob", "delivered", 4) is None
    bob = await store.set_marker(conv, "bob", "delivered", 5)
    assert bob is not None and (bob.delivered, bob.read) == (5, 4)
    with pytest.raises(BadRequest):
        await store.set_marker(conv, "bob", "read", 6)
    with pytest.raises(NotFound):
        await store.set_marker(conv, "carol", "read", 1)
    member = await store.get_member(conv, "bob")
    assert member is not None and (member.delivered, member.read) == (5, 4)


async def test_sending_moves_the_senders_markers(store: Store) -> None:
    conv = await direct(store)
    await store.append_message(msg(conv, "alice"))
    await store.append_message(msg(conv, "bob"))
    await store.append_message(msg(conv, "alice"))
    members = {m.user: m for m in await store.get_members(conv)}
    assert (members["alice"].delivered, members["alice"].read) == (3, 3)
    assert (members["bob"].delivered, members["bob"].read) == (2, 2)


async def test_set_muted(store: Store) -> None:
    conv = await direct(store)
    await store.set_muted(conv, "bob", True)
    bob = await store.get_member(conv, "bob")
    assert bob is not None and bob.muted
    await store.set_muted(conv, "bob", False)
    bob = await store.get_member(conv, "bob")
    assert bob is not None and not bob.muted
    with pytest.raises(NotFound):
        await store.set_muted(conv, "carol", True)


# -- conversations -------------------------------------------------------------------------


async def test_list_conversations_order_unread_and_last_message(store: Store) -> None:
    await users(store, "alice", "bob", "carol")
    with_bob = await direct(store, "alice", "bob")
    with_carol = await direct(store, "alice", "carol")
    ops = await group(store, "carol", "alice", "bob")  # created at T0
    await store.append_message(msg(with_bob, "bob", "b1", ts=T0 + 10))
    await store.append_message(msg(with_bob, "alice", "a1", ts=T0 + 11))
    await store.append_message(msg(with_bob, "bob", "b2", ts=T0 + 12))
    await store.append_message(msg(with_carol, "carol", "c1", ts=T0 + 20))
    await store.append_message(msg(with_carol, "carol", "c2", ts=T0 + 21))

    listed = await store.list_conversations("alice")
    assert [s.conversation.conv for s in listed] == [with_carol, with_bob, ops]
    by_conv = {s.conversation.conv: s for s in listed}
    assert by_conv[with_carol].unread == 2
    assert by_conv[with_bob].unread == 1  # b2: alice's own send marked b1 read
    assert by_conv[ops].unread == 1  # carol's "create"
    assert by_conv[with_bob].last_message is not None
    assert by_conv[with_bob].last_message.body == "b2"
    assert by_conv[with_bob].last_activity == T0 + 12
    assert by_conv[with_bob].conversation.last_seq == 3
    assert by_conv[with_bob].conversation.kind == "direct"
    assert by_conv[ops].conversation.title == "ops"
    assert [m.user for m in by_conv[ops].members] == ["carol", "alice", "bob"]
    bob_marker = {m.user: m for m in by_conv[with_bob].members}["bob"]
    assert (bob_marker.delivered, bob_marker.read) == (3, 3)

    await store.set_marker(with_carol, "alice", "read", 1)
    await store.append_message(msg(ops, "alice", "hello all", ts=T0 + 30))
    listed = await store.list_conversations("alice")
    assert [s.conversation.conv for s in listed] == [ops, with_carol, with_bob]
    by_conv = {s.conversation.conv: s for s in listed}
    assert (by_conv[with_carol].unread, by_conv[ops].unread) == (1, 0)
    carol = {s.conversation.conv: s for s in await store.list_conversations("carol")}
    assert set(carol) == {with_carol, ops}
    assert carol[ops].unread == 1 and carol[with_carol].unread == 0
    assert await store.list_conversations("nobody") == []


async def test_a_new_direct_conversation_lists_without_messages(store: Store) -> None:
    conv = await direct(store)
    (summary,) = await store.list_conversations("bob")
    assert summary.conversation.conv == conv
    assert (summary.unread, summary.last_message, summary.last_activity) == (0, None, T0)


async def test_one_direct_conversation_per_pair_under_races(store: Store) -> None:
    await users(store, "alice", "bob")
    calls = [
        store.get_or_create_direct(*pair, f"d{i}", T0)
        for i, pair in enumerate([("alice", "bob"), ("bob", "alice")] * 5)
    ]
    results = await bounded(asyncio.gather(*calls))
    assert len({conv.conv for conv, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    conv = results[0][0]
    assert (conv.kind, conv.title, conv.last_seq, conv.created_at) == ("direct", None, 0, T0)
    members = await store.get_members(conv.conv)
    assert {m.user for m in members} == {"alice", "bob"}
    assert {m.role for m in members} == {"member"}
    assert [c.user for c in await store.list_contacts("alice")] == ["bob"]
    assert [c.user for c in await store.list_contacts("bob")] == ["alice"]
    again, created = await store.get_or_create_direct("bob", "alice", "other", T0 + 1)
    assert (again.conv, created) == (conv.conv, False)
    assert await store.get_conversation("other") is None


async def test_create_group_appends_the_system_message_as_seq_1(store: Store) -> None:
    sys_msg = system("g1", "alice", "create", users=["bob", "carol"])
    result = await store.create_group(
        "g1", "ops", [("alice", "owner"), ("bob", "admin"), ("carol", "member")], sys_msg
    )
    assert result.message.seq == 1 and result.message.kind == "system"
    assert result.message.event == {"action": "create", "users": ["bob", "carol"]}
    assert result.message.sender == "alice" and not result.duplicate
    assert list(result.members) == ["alice", "bob", "carol"]
    conv = await store.get_conversation("g1")
    assert conv is not None
    assert (conv.kind, conv.title, conv.last_seq, conv.created_at) == ("group", "ops", 1, T0)
    members = await store.get_members("g1")
    assert [(m.user, m.role, m.joined_at) for m in members] == [
        ("alice", "owner", T0),
        ("bob", "admin", T0),
        ("carol", "member", T0),
    ]
    page, _ = await store.history("g1", before=None, after=None, limit=10)
    assert page == [result.message]
    with pytest.raises(Conflict):
        await store.create_group("g1", "again", [("bob", "owner")], system("g1", "bob", "create"))
    assert await store.get_conversation("nope") is None
    assert await store.get_members("nope") == []
    assert await store.get_member("g1", "dave") is None


async def test_apply_group_change(store: Store) -> None:
    conv = await group(store, "alice", "bob", "carol")
    version = (await store.get_conversation(conv)).version  # type: ignore[union-attr]
    await store.append_message(msg(conv, "bob", "hello"))

    change = GroupChange(add=(("dave", "member"), ("erin", "admin")), remove=("carol",))
    result = await store.apply_group_change(
        conv, version, change, system(conv, "alice", "add", ts=T0 + 5, users=["dave", "erin"])
    )
    assert result.message.seq == 3 and result.message.kind == "system"
    assert list(result.members) == ["alice", "bob", "dave", "erin", "carol"]
    after = await store.get_conversation(conv)
    assert after is not None and after.version > version and after.last_seq == 3
    members = await store.get_members(conv)
    assert [(m.user, m.role) for m in members] == [
        ("alice", "owner"),
        ("bob", "member"),
        ("dave", "member"),
        ("erin", "admin"),
    ]
    assert {m.user: m.joined_at for m in members}["dave"] == T0 + 5
    with pytest.raises(NotFound):
        await store.append_message(msg(conv, "carol", "am I still here?"))
    assert [s.conversation.conv for s in await store.list_conversations("carol")] == []
    assert [s.conversation.conv for s in await store.list_conversations("dave")] == [conv]

    with pytest.raises(StaleVersion):
        await store.apply_group_change(
            conv, version, GroupChange(title="late"), system(conv, "alice", "title")
        )
    assert (await store.get_conversation(conv)).title == "ops"  # type: ignore[union-attr]
    assert (await store.get_conversation(conv)).last_seq == 3  # type: ignore[union-attr]

    result = await store.apply_group_change(
        conv,
        after.version,
        GroupChange(roles=(("bob", "admin"),), title="ops-team"),
        system(conv, "alice", "role", user="bob", role="admin"),
    )
    assert result.message.seq == 4
    latest = await store.get_conversation(conv)
    assert latest is not None and latest.title == "ops-team" and latest.version > after.version
    assert (await store.get_member(conv, "bob")).role == "admin"  # type: ignore[union-attr]
    with pytest.raises(NotFound):
        await store.apply_group_change(
            "nope", 0, GroupChange(title="x"), system("nope", "alice", "title")
        )


async def test_a_leaving_member_sees_their_own_removal(store: Store) -> None:
    conv = await group(store, "alice", "bob")
    version = (await store.get_conversation(conv)).version  # type: ignore[union-attr]
    result = await store.apply_group_change(
        conv, version, GroupChange(remove=("bob",)), system(conv, "bob", "leave")
    )
    assert list(result.members) == ["alice", "bob"]
    assert [m.user for m in await store.get_members(conv)] == ["alice"]


async def test_concurrent_group_changes_one_wins(store: Store) -> None:
    conv = await group(store, "alice", "bob")
    version = (await store.get_conversation(conv)).version  # type: ignore[union-attr]
    changes = [
        store.apply_group_change(
            conv, version, GroupChange(add=((f"u{i}", "member"),)), system(conv, "alice", "add")
        )
        for i in range(5)
    ]
    results = await bounded(asyncio.gather(*changes, return_exceptions=True))
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert all(isinstance(r, StaleVersion) for r in results if isinstance(r, BaseException))
    assert len(await store.get_members(conv)) == 3


# -- users and sessions --------------------------------------------------------------------


async def test_users(store: Store) -> None:
    alice = await store.create_user("alice", "h1", T0)
    assert (alice.username, alice.password_hash, alice.created_at) == ("alice", "h1", T0)
    assert not alice.disabled and alice.last_seen is None
    with pytest.raises(Conflict):
        await store.create_user("alice", "h2", T0)
    assert await store.get_user("alice") == alice
    assert await store.get_user("nobody") is None
    await store.create_user("bob", "h", T0)
    await store.set_password_hash("alice", "h3")
    await store.set_last_seen("alice", T0 + 9)
    alice = await store.get_user("alice")  # type: ignore[assignment]
    assert (alice.password_hash, alice.last_seen) == ("h3", T0 + 9)
    assert await store.existing_users(["alice", "bob", "carol"]) == {"alice", "bob"}
    assert await store.existing_users([]) == set()
    with pytest.raises(NotFound):
        await store.set_password_hash("nobody", "h")
    with pytest.raises(NotFound):
        await store.set_user_disabled("nobody", True)


async def test_disabling_a_user_deletes_their_sessions(store: Store) -> None:
    await users(store, "alice", "bob")
    await store.create_session(Session("t1", "alice", "phone", T0, T0 + 1000))
    await store.create_session(Session("t2", "alice", "laptop", T0, T0 + 1000))
    await store.create_session(Session("t3", "bob", "phone", T0, T0 + 1000))
    await store.set_user_disabled("alice", True)
    assert (await store.get_user("alice")).disabled  # type: ignore[union-attr]
    assert await store.get_session("t1") is None and await store.get_session("t2") is None
    assert await store.get_session("t3") is not None
    assert await store.existing_users(["alice", "bob"]) == {"bob"}
    await store.set_user_disabled("alice", False)
    assert await store.existing_users(["alice", "bob"]) == {"alice", "bob"}


async def test_sessions(store: Store) -> None:
    await users(store, "alice")
    session = Session("tok", "alice", "phone", T0, T0 + 100)
    await store.create_session(session)
    assert await store.get_session("tok") == session
    await store.extend_session("tok", T0 + 500)
    extended = await store.get_session("tok")
    assert extended is not None and extended.expires_at == T0 + 500
    await store.extend_session("missing", T0)  # nothing to extend: no error
    assert await store.delete_session("tok") == extended
    assert await store.delete_session("tok") is None
    assert await store.get_session("tok") is None
    await store.create_session(Session("a", "alice", "phone", T0, T0 + 100))
    await store.create_session(Session("b", "alice", "laptop", T0, T0 + 100))
    assert sorted(await store.delete_user_sessions("alice")) == ["a", "b"]
    assert await store.delete_user_sessions("alice") == []


async def test_revocations_are_recorded_with_their_time_and_listed_since_a_cursor(
    store: Store,
) -> None:
    await users(store, "alice", "bob", "carol")
    assert await store.users_revoked_since(0) == []
    await store.create_session(Session("a1", "alice", "phone", T0, T0 + 1000))
    await store.create_session(Session("b1", "bob", "phone", T0, T0 + 1000))
    await store.set_user_disabled("alice", True, revoked_at=T0 + 10)
    assert await store.get_session("a1") is None
    # at or after the cursor: a revocation in the cursor's own millisecond is not lost
    assert await store.users_revoked_since(T0 + 10) == [("alice", T0 + 10)]
    assert await store.users_revoked_since(T0 + 11) == []
    assert await store.delete_user_sessions("bob", revoked_at=T0 + 10) == ["b1"]
    # oldest first, and users revoked in the same millisecond are all there
    assert await store.users_revoked_since(T0) == [("alice", T0 + 10), ("bob", T0 + 10)]
    # a later revocation replaces the time
    assert await store.delete_user_sessions("bob", revoked_at=T0 + 20) == []
    assert await store.users_revoked_since(T0 + 11) == [("bob", T0 + 20)]
    # enabling revokes nothing and forgets nothing
    await store.set_user_disabled("alice", False)
    assert await store.users_revoked_since(T0) == [("alice", T0 + 10), ("bob", T0 + 20)]


async def test_only_a_revocation_with_a_time_is_recorded(store: Store) -> None:
    await users(store, "alice", "carol")
    await store.create_session(Session("c1", "carol", "phone", T0, T0 + 1000))
    assert await store.delete_user_sessions("carol") == ["c1"]
    await store.set_user_disabled("carol", True)
    await store.set_user_disabled("alice", False, revoked_at=T0 + 5)  # enabling: no revocation
    assert await store.delete_user_sessions("nobody", revoked_at=T0 + 5) == []
    with pytest.raises(NotFound):
        await store.set_user_disabled("nobody", True, revoked_at=T0 + 5)
    assert await store.users_revoked_since(0) == []


# -- contacts ------------------------------------------------------------------------------


async def test_contacts_and_followers(store: Store) -> None:
    await users(store, "alice", "bob", "carol")
    await store.set_last_seen("carol", T0 + 1)
    await store.add_contact("alice", "carol")
    await store.add_contact("alice", "bob")
    await store.add_contact("alice", "bob")  # twice is once
    await store.add_contact("bob", "carol")
    contacts = await store.list_contacts("alice")
    assert [(c.user, c.last_seen) for c in contacts] == [("bob", None), ("carol", T0 + 1)]
    assert sorted(await store.followers("carol")) == ["alice", "bob"]
    assert await store.followers("alice") == []
    await store.remove_contact("alice", "carol")
    await store.remove_contact("alice", "nobody")
    assert [c.user for c in await store.list_contacts("alice")] == ["bob"]
    assert await store.followers("carol") == ["bob"]


# -- media ---------------------------------------------------------------------------------


async def test_media_and_who_may_see_it(store: Store) -> None:
    await users(store, "alice", "bob", "carol", "dave")
    item = MediaItem("md1", "alice", "image/png", 100, "cat.png", "0f" * 32, T0, 10, 20)
    await store.create_media(item)
    assert await store.get_media("md1") == item
    assert await store.get_media("nope") is None
    with pytest.raises(Conflict):
        await store.create_media(item)
    conv = await group(store, "carol", "bob", "dave")
    assert await store.media_visible_to("md1", "alice")
    assert not await store.media_visible_to("md1", "bob")
    await store.append_message(msg(conv, "carol", "forwarded", media=(item,)))
    assert await store.media_visible_to("md1", "bob")
    assert await store.media_visible_to("md1", "carol")
    assert not await store.media_visible_to("md1", "eve")
    version = (await store.get_conversation(conv)).version  # type: ignore[union-attr]
    await store.apply_group_change(
        conv, version, GroupChange(remove=("bob",)), system(conv, "carol", "remove")
    )
    assert not await store.media_visible_to("md1", "bob")
    assert await store.media_visible_to("md1", "dave")
    assert not await store.media_visible_to("nope", "alice")


# -- push subscriptions --------------------------------------------------------------------


async def test_push_subscriptions(store: Store) -> None:
    web = PushSubscription("s1", "alice", "webpush", {"endpoint": "https://e/1", "keys": {}}, T0)
    hook = PushSubscription("s2", "alice", "webhook", {"url": "https://h"}, T0 + 1)
    bobs = PushSubscription("s3", "bob", "webpush", {"endpoint": "https://e/3"}, T0)
    for sub in (web, hook, bobs):
        await store.add_push_subscription(sub)
    assert sorted(await store.push_subscriptions(["alice"]), key=lambda s: s.id) == [web, hook]
    assert {s.id for s in await store.push_subscriptions(["alice", "bob", "x"])} == {
        "s1",
        "s2",
        "s3",
    }
    assert await store.push_subscriptions([]) == []
    assert not await store.delete_push_subscription("bob", "s1")  # not bob's
    assert await store.delete_push_subscription("alice", "s1")
    assert not await store.delete_push_subscription("alice", "s1")
    await store.delete_push_subscription_by_id("s3")
    await store.delete_push_subscription_by_id("s3")
    assert await store.push_subscriptions(["alice", "bob"]) == [hook]


async def test_ping(store: Store) -> None:
    await store.ping()
