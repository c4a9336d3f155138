"""One handler per WebSocket request type: typed request in, the ``ok`` reply's fields out.

Handlers only translate between frames and the service; the rules live in the service.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from chatd.transport import frames
from chatd.transport.keys import CHAT

if TYPE_CHECKING:
    from chatd.transport.ws import Connection

Result = dict[str, Any] | None


async def send(app: web.Application, conn: Connection, req: frames.Send) -> Result:
    result = await app[CHAT].send(
        conn.user,
        conv=req.conv,
        to=req.to,
        client_id=req.client_id,
        body=req.body,
        media_ids=req.media,
        reply_to=req.reply_to,
        origin=conn,
    )
    m = result.message
    return {
        "conv": m.conv,
        "seq": m.seq,
        "msg_id": m.msg_id,
        "ts": m.ts,
        "duplicate": result.duplicate,
    }


async def history(app: web.Application, conn: Connection, req: frames.History) -> Result:
    messages, more = await app[CHAT].history(
        conn.user, req.conv, before=req.before, after=req.after, limit=req.limit
    )
    return {"messages": [frames.message_object(m) for m in messages], "more": more}


async def conversations(
    app: web.Application, conn: Connection, req: frames.Conversations
) -> Result:
    summaries = await app[CHAT].conversations(conn.user)
    return {"conversations": [frames.conversation_object(s, conn.user) for s in summaries]}


async def receipt(app: web.Application, conn: Connection, req: frames.Receipt) -> Result:
    member = await app[CHAT].receipt(conn.user, req.conv, req.kind, req.seq)
    return {"conv": req.conv, "delivered": member.delivered, "read": member.read}


async def typing(app: web.Application, conn: Connection, req: frames.Typing) -> Result:
    # Over the per-socket rate, typing frames are dropped without an error (the protocol
    # allows it, and a client has nothing useful to do with one).
    if conn.typing_bucket.take(int(time.monotonic() * 1000)) > 0:
        return None
    await app[CHAT].typing(conn.user, req.conv, req.state, origin=conn)
    return None


async def create_group(app: web.Application, conn: Connection, req: frames.CreateGroup) -> Result:
    conversation = await app[CHAT].create_group(conn.user, req.title, req.members)
    return {"conv": conversation.conv}


def _seq(message: Any) -> dict[str, Any]:
    return {"seq": message.seq} if message is not None else {}


async def add_members(app: web.Application, conn: Connection, req: frames.AddMembers) -> Result:
    return {"conv": req.conv, **_seq(await app[CHAT].add_members(conn.user, req.conv, req.members))}


async def remove_member(app: web.Application, conn: Connection, req: frames.RemoveMember) -> Result:
    return {"conv": req.conv, **_seq(await app[CHAT].remove_member(conn.user, req.conv, req.user))}


async def leave(app: web.Application, conn: Connection, req: frames.Leave) -> Result:
    return {"conv": req.conv, **_seq(await app[CHAT].leave(conn.user, req.conv))}


async def update_group(app: web.Application, conn: Connection, req: frames.UpdateGroup) -> Result:
    return {"conv": req.conv, **_seq(await app[CHAT].update_group(conn.user, req.conv, req.title))}


async def set_role(app: web.Application, conn: Connection, req: frames.SetRole) -> Result:
    return {
        "conv": req.conv,
        **_seq(await app[CHAT].set_role(conn.user, req.conv, req.user, req.role)),
    }


async def contacts(app: web.Application, conn: Connection, req: frames.Contacts) -> Result:
    listed = await app[CHAT].contacts(conn.user)
    return {
        "contacts": [
            {
                "user": c.user,
                "status": "online" if c.online else "offline",
                "last_seen": c.last_seen,
            }
            for c in listed
        ]
    }


async def add_contact(app: web.Application, conn: Connection, req: frames.AddContact) -> Result:
    await app[CHAT].add_contact(conn.user, req.user)
    return {}


async def remove_contact(
    app: web.Application, conn: Connection, req: frames.RemoveContact
) -> Result:
    await app[CHAT].remove_contact(conn.user, req.user)
    return {}


async def ping(app: web.Application, conn: Connection, req: frames.Ping) -> Result:
    return {"ts": int(time.time() * 1000)}


async def mute(app: web.Application, conn: Connection, req: frames.Mute) -> Result:
    await app[CHAT].set_muted(conn.user, req.conv, req.muted)
    return {"conv": req.conv, "muted": req.muted}


HANDLERS: dict[type, Callable[[web.Application, Connection, Any], Awaitable[Result]]] = {
    frames.Send: send,
    frames.History: history,
    frames.Conversations: conversations,
    frames.Receipt: receipt,
    frames.Typing: typing,
    frames.CreateGroup: create_group,
    frames.AddMembers: add_members,
    frames.RemoveMember: remove_member,
    frames.Leave: leave,
    frames.UpdateGroup: update_group,
    frames.SetRole: set_role,
    frames.Contacts: contacts,
    frames.AddContact: add_contact,
    frames.RemoveContact: remove_contact,
    frames.Ping: ping,
    frames.Mute: mute,
}
"""Every request type but ``hello`` (which only opens a socket) has exactly one handler."""
