// Building the page from the store. Everything a user typed (messages, names, titles,
// filenames) goes into the DOM through textContent or attributes set one by one: never as
// HTML, so no message can become markup.

import { mediaBlobUrl } from "./api.js";

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

// ---- times ------------------------------------------------------------------------------

export function clock(ts) {
  return new Date(ts).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function sameDay(a, b) {
  return (
    a.getFullYear() === b.getFullYear() &&
    a.getMonth() === b.getMonth() &&
    a.getDate() === b.getDate()
  );
}

export function dayLabel(ts) {
  const day = new Date(ts);
  const today = new Date();
  const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
  if (sameDay(day, today)) return "Today";
  if (sameDay(day, yesterday)) return "Yesterday";
  const options = { weekday: "long", day: "numeric", month: "long" };
  if (day.getFullYear() !== today.getFullYear()) options.year = "numeric";
  return day.toLocaleDateString([], options);
}

export function lastSeenText(presence) {
  if (!presence) return "";
  if (presence.status === "online") return "online";
  if (!presence.last_seen) return "offline";
  const when = dayLabel(presence.last_seen);
  const time = clock(presence.last_seen);
  return when === "Today" || when === "Yesterday"
    ? `last seen ${when.toLowerCase()} at ${time}`
    : `last seen ${when} at ${time}`;
}

function shortTime(ts) {
  return sameDay(new Date(ts), new Date()) ? clock(ts) : dayLabel(ts);
}

export function fileSize(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
}

// ---- conversation list ------------------------------------------------------------------

export function previewText(store, message) {
  if (!message) return "";
  if (message.kind === "system") return systemText(message);
  let text = message.body || "";
  if (!text && message.media && message.media.length) {
    const images = message.media.every((m) => m.mime && m.mime.startsWith("image/"));
    const names = message.media.map((m) => m.filename || "file").join(", ");
    text = `${images ? "Photo" : "File"}: ${names}`;
  }
  if (message.from === store.me) return `You: ${text}`;
  const c = store.conversations.get(message.conv);
  return c && c.kind === "group" ? `${message.from}: ${text}` : text;
}

export function renderConversationList(list, store, activeConv, onOpen) {
  const items = [];
  for (const c of store.sortedConversations()) {
    const item = el("li", "conversation");
    item.dataset.conv = c.conv;
    item.tabIndex = 0;
    item.setAttribute("role", "button");
    if (c.conv === activeConv) item.classList.add("active");

    const avatar = el("span", "avatar", initial(store.displayName(c)));
    const peer = store.peer(c);
    if (peer) {
      const presence = store.presence.get(peer);
      const dot = el("span", "presence-dot");
      dot.dataset.status = presence ? presence.status : "offline";
      dot.title = presence ? lastSeenText(presence) : "offline";
      avatar.append(dot);
    } else {
      avatar.classList.add("group");
    }

    const main = el("div", "conversation-main");
    const top = el("div", "conversation-top");
    top.append(el("span", "conversation-name", store.displayName(c)));
    if (c.lastMessage) top.append(el("time", "conversation-time", shortTime(c.lastMessage.ts)));
    const bottom = el("div", "conversation-bottom");
    const typists = store.typists(c);
    const preview = typists.length
      ? el("span", "conversation-preview typing-preview", typingText(c, typists))
      : el("span", "conversation-preview", previewText(store, c.lastMessage));
    bottom.append(preview);
    if (c.unread > 0) {
      const badge = el("span", "unread-badge", c.unread > 99 ? "99+" : c.unread);
      badge.setAttribute("aria-label", `${c.unread} unread`);
      bottom.append(badge);
    }
    main.append(top, bottom);
    item.append(avatar, main);
    item.addEventListener("click", () => onOpen(c.conv));
    item.addEventListener("keydown", (event) => {
      if (event.key === "Enter") onOpen(c.conv);
    });
    items.push(item);
  }
  list.replaceChildren(...items);
  return items.length;
}

function initial(name) {
  const first = [...(name || "?").replace(/^\(/, "")][0] || "?";
  return first.toUpperCase();
}

export function typingText(c, typists) {
  if (typists.length === 0) return "";
  if (c.kind === "direct") return "typing…";
  if (typists.length === 1) return `${typists[0]} is typing…`;
  if (typists.length === 2) return `${typists[0]} and ${typists[1]} are typing…`;
  return "several people are typing…";
}

// ---- messages ---------------------------------------------------------------------------

export function systemText(message) {
  const e = message.event || {};
  const who = message.from;
  const users = (e.users || []).join(", ");
  switch (e.action) {
    case "create":
      return `${who} created the group “${e.title}”`;
    case "add":
      return `${who} added ${users}`;
    case "remove":
      return `${who} removed ${users}`;
    case "leave":
      return e.owner ? `${users} left; ${e.owner} is now the owner` : `${users} left`;
    case "title":
      return `${who} renamed the group to “${e.title}”`;
    case "role":
      return `${who} made ${users} ${e.role === "admin" ? "an admin" : "a member"}`;
    default:
      return `${who} changed the group`;
  }
}

const TICKS = { pending: "◔", sent: "✓", delivered: "✓✓", read: "✓✓", failed: "!" };
const TICK_TITLES = {
  pending: "Sending…",
  sent: "Sent",
  delivered: "Delivered",
  read: "Read",
  failed: "Not sent",
};

function tick(state) {
  const node = el("span", "tick", TICKS[state]);
  node.dataset.state = state;
  node.title = TICK_TITLES[state];
  node.setAttribute("aria-label", TICK_TITLES[state]);
  return node;
}

function attachment(item) {
  const box = el("div", "attachment");
  const path = `/api/v1/media/${encodeURIComponent(item.id)}`;
  if (item.mime && item.mime.startsWith("image/") && item.width) {
    const img = el("img", "thumb");
    img.alt = item.filename || "image";
    img.width = Math.min(item.width, 240);
    img.height = Math.round((img.width * item.height) / item.width) || 160;
    mediaBlobUrl(`${path}/thumbnail`).then(
      (url) => {
        img.src = url;
      },
      () => img.classList.add("broken"),
    );
    img.addEventListener("click", () => openMedia(path));
    box.append(img);
  }
  const link = el("a", "download");
  link.href = "#";
  link.append(el("span", "file-name", item.filename || "file"));
  link.append(el("span", "file-size", ` · ${fileSize(item.size)}`));
  link.title = "Download";
  link.addEventListener("click", (event) => {
    event.preventDefault();
    download(path, item.filename || "file");
  });
  box.append(link);
  return box;
}

async function openMedia(path) {
  try {
    window.open(await mediaBlobUrl(path), "_blank", "noopener");
  } catch {
    // The link next to it still offers the download.
  }
}

async function download(path, filename) {
  const url = await mediaBlobUrl(path);
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
}

function messageItem(store, c, m, state, onDiscard) {
  if (m.kind === "system") {
    const item = el("li", "system", systemText(m));
    item.dataset.seq = m.seq;
    return item;
  }
  const own = m.from === store.me;
  const item = el("li", `message ${own ? "own" : "other"}`);
  if (m.seq) item.dataset.seq = m.seq;
  if (state === "pending" || state === "failed") item.classList.add(state);
  const bubble = el("div", "bubble");
  if (!own && c.kind === "group") bubble.append(el("span", "author", m.from));
  if (m.media && m.media.length) {
    const files = el("div", "attachments");
    for (const item of m.media) files.append(attachment(item));
    bubble.append(files);
  }
  if (m.body) bubble.append(el("p", "body", m.body));
  const meta = el("span", "meta");
  meta.append(el("time", null, clock(m.ts)));
  if (own) meta.append(tick(state));
  bubble.append(meta);
  if (m.error) {
    const why = el("p", "send-error", `Not sent: ${m.error} `);
    if (onDiscard) {
      const discard = el("button", "link discard", "Remove");
      discard.type = "button";
      discard.addEventListener("click", () => onDiscard(m));
      why.append(discard);
    }
    bubble.append(why);
  }
  item.append(bubble);
  return item;
}

// The whole list, stored messages then the ones still on their way, with a separator
// wherever the day changes.
export function renderMessages(list, store, c, outgoing, onDiscard = null) {
  const items = [];
  let lastDay = null;
  const add = (m, state) => {
    const day = dayLabel(m.ts);
    if (day !== lastDay) {
      items.push(el("li", "day", day));
      lastDay = day;
    }
    items.push(messageItem(store, c, m, state, onDiscard));
  };
  for (const m of store.orderedMessages(c)) {
    add(m, m.from === store.me ? store.tickState(c, m) : null);
  }
  for (const m of outgoing) add(m, m.error ? "failed" : "pending");
  list.replaceChildren(...items);
}

// ---- group details ----------------------------------------------------------------------

// actions: {remove(user), setRole(user, role)}; only what the caller's role allows is offered.
export function renderMembers(list, store, c, actions) {
  const mine = store.member(c, store.me);
  const myRole = mine ? mine.role : "member";
  const button = (className, text, onClick) => {
    const b = el("button", `secondary small ${className}`, text);
    b.type = "button";
    b.addEventListener("click", onClick);
    return b;
  };
  const items = c.members.map((m) => {
    const item = el("li", "member");
    item.dataset.user = m.user;
    item.append(el("span", "member-name", m.user === store.me ? `${m.user} (you)` : m.user));
    if (m.role !== "member") item.append(el("span", "role", m.role));
    const other = m.user !== store.me && m.role !== "owner";
    if (other && myRole === "owner") {
      const promote = m.role === "member";
      item.append(
        button("set-role", promote ? "Make admin" : "Make member", () =>
          actions.setRole(m.user, promote ? "admin" : "member"),
        ),
      );
    }
    if (other && (myRole === "owner" || (myRole === "admin" && m.role === "member"))) {
      item.append(button("remove-member", "Remove", () => actions.remove(m.user)));
    }
    return item;
  });
  list.replaceChildren(...items);
  return myRole;
}
