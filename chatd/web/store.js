// What the client knows: conversations, the messages it holds of each (keyed by seq, so a
// message that arrives twice, live and again through history, is kept once), members'
// markers, presence and who is typing. No DOM and no network here.

const TYPING_TTL_MS = 6000; // a "start" with no "stop" fades after this long

export class Store {
  constructor(me) {
    this.me = me;
    this.conversations = new Map(); // conv id -> Conversation
    this.presence = new Map(); // username -> {status, last_seen}
    this.outbox = []; // messages typed but not yet acknowledged by the server
  }

  // ---- conversations --------------------------------------------------------------------

  conversation(conv) {
    let c = this.conversations.get(conv);
    if (!c) {
      c = {
        conv,
        kind: "direct",
        title: null,
        members: [],
        lastSeq: 0,
        unread: 0,
        lastMessage: null,
        muted: false,
        messages: new Map(), // seq -> message
        // Everything from `loadedFrom` up to the highest seq held is present, gap-free.
        loadedFrom: null,
        moreBefore: true,
        loading: false, // a page of older history is on its way
        // The markers this device has asked the server to move to (replies may be pending).
        askedRead: 0,
        askedDelivered: 0,
        typing: new Map(), // username -> expiry time
        // The seq the member list and title are current as of: system messages at or
        // below it (old history) are already reflected and must not be applied again.
        stateSeq: 0,
      };
      this.conversations.set(conv, c);
    }
    return c;
  }

  // A `conversations` reply entry. Live events can overtake it (the server computed it before
  // a message or receipt it has since sent), so nothing it says may move the client back:
  // markers only rise, membership and title are taken only if no newer system message was
  // seen, and messages newer than it still count as unread.
  applySummary(summary) {
    const c = this.conversation(summary.conv);
    c.kind = summary.kind;
    c.muted = summary.muted;
    if (summary.last_seq >= c.stateSeq || c.members.length === 0) {
      const before = new Map(c.members.map((m) => [m.user, m]));
      c.members = summary.members.map((m) => {
        const old = before.get(m.user);
        if (!old) return m;
        return {
          ...m,
          delivered: Math.max(m.delivered, old.delivered),
          read: Math.max(m.read, old.read),
        };
      });
      c.title = summary.title;
      c.stateSeq = summary.last_seq;
    }
    c.lastSeq = Math.max(c.lastSeq, summary.last_seq);
    const readUpTo = Math.max(this.myMarkers(c).read, c.askedRead);
    let newer = 0;
    for (const m of c.messages.values()) {
      if (m.seq > summary.last_seq && m.seq > readUpTo && m.from !== this.me) newer += 1;
    }
    c.unread = (readUpTo >= summary.last_seq ? 0 : summary.unread) + newer;
    if (summary.last_message) this.noteLast(c, summary.last_message);
    return c;
  }

  // The server's list is the truth for membership: drop what we are no longer in.
  retainOnly(convIds) {
    for (const id of [...this.conversations.keys()]) {
      if (!convIds.has(id)) this.conversations.delete(id);
    }
  }

  noteLast(c, message) {
    if (!c.lastMessage || message.seq >= c.lastMessage.seq) c.lastMessage = message;
    c.lastSeq = Math.max(c.lastSeq, message.seq);
  }

  // Most recent activity first, like the server's list; drafts have no activity yet.
  sortedConversations() {
    const time = (c) => (c.lastMessage ? c.lastMessage.ts : 0);
    return [...this.conversations.values()].sort((a, b) => time(b) - time(a));
  }

  // The name to show: a group's title, or the other member of a direct conversation.
  displayName(c) {
    if (c.kind === "group") return c.title || "(untitled group)";
    return this.peer(c) || "(direct chat)";
  }

  peer(c) {
    if (c.kind !== "direct") return null;
    const other = c.members.find((m) => m.user !== this.me);
    return other ? other.user : null;
  }

  directWith(user) {
    for (const c of this.conversations.values()) {
      if (c.kind === "direct" && this.peer(c) === user) return c;
    }
    return null;
  }

  member(c, user) {
    return c.members.find((m) => m.user === user) || null;
  }

  // ---- messages -------------------------------------------------------------------------

  highestHeld(c) {
    let top = 0;
    for (const seq of c.messages.keys()) top = Math.max(top, seq);
    return top;
  }

  // Adds messages (live or from history); returns how many were new.
  addMessages(conv, messages) {
    const c = this.conversation(conv);
    let added = 0;
    for (const m of messages) {
      if (c.messages.has(m.seq)) continue;
      c.messages.set(m.seq, m);
      added += 1;
      this.noteLast(c, m);
      if (m.kind === "system" && m.seq > c.stateSeq) {
        this.applySystem(c, m);
        c.stateSeq = m.seq;
      }
    }
    return added;
  }

  orderedMessages(c) {
    return [...c.messages.values()].sort((a, b) => a.seq - b.seq);
  }

  // A system message changes the group as seen by this client until the next list refresh.
  applySystem(c, m) {
    const e = m.event || {};
    if (e.action === "title" || e.action === "create") c.title = e.title ?? c.title;
    const users = e.users || [];
    if (e.action === "add") {
      for (const user of users) {
        if (!this.member(c, user)) c.members.push({ user, role: "member", delivered: 0, read: 0 });
      }
    } else if (e.action === "remove" || e.action === "leave") {
      c.members = c.members.filter((mem) => !users.includes(mem.user));
      if (e.owner) {
        const heir = this.member(c, e.owner);
        if (heir) heir.role = "owner";
      }
    } else if (e.action === "role") {
      for (const user of users) {
        const mem = this.member(c, user);
        if (mem) mem.role = e.role;
      }
    }
  }

  // ---- markers and ticks ----------------------------------------------------------------

  applyReceipt(event) {
    const c = this.conversations.get(event.conv);
    if (!c) return null;
    const m = this.member(c, event.user);
    if (m) {
      if (event.kind === "read") {
        m.read = Math.max(m.read, event.seq);
        m.delivered = Math.max(m.delivered, event.seq);
      } else {
        m.delivered = Math.max(m.delivered, event.seq);
      }
    }
    if (event.user === this.me && event.kind === "read") {
      // Read here or on another device: only what came after the marker is left unread.
      c.unread = event.seq >= c.lastSeq ? 0 : Math.min(c.unread, c.lastSeq - event.seq);
    }
    return c;
  }

  // "sent": stored; "delivered": on a device of every other member; "read": seen by all.
  tickState(c, message) {
    const others = c.members.filter((m) => m.user !== this.me);
    if (others.length === 0) return "sent";
    if (others.every((m) => m.read >= message.seq)) return "read";
    if (others.every((m) => m.delivered >= message.seq)) return "delivered";
    return "sent";
  }

  myMarkers(c) {
    return this.member(c, this.me) || { delivered: 0, read: 0 };
  }

  // ---- typing and presence --------------------------------------------------------------

  setTyping(conv, user, state) {
    const c = this.conversations.get(conv);
    if (!c) return;
    if (state === "start") c.typing.set(user, Date.now() + TYPING_TTL_MS);
    else c.typing.delete(user);
  }

  typists(c) {
    const now = Date.now();
    for (const [user, until] of c.typing) if (until < now) c.typing.delete(user);
    return [...c.typing.keys()].sort();
  }

  setPresence(user, status, lastSeen) {
    const old = this.presence.get(user) || {};
    this.presence.set(user, { status, last_seen: lastSeen ?? old.last_seen ?? null });
  }
}
