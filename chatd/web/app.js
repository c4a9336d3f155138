// The chatd web client: wires the page to the store, the socket and the HTTP API.
//
// Flow: sign in (or create an account) -> open /ws and say hello -> `conversations` and
// `contacts` -> live events. After every (re)connect the client catches up: it asks for the
// conversation list again and, for each conversation it holds messages of, the `history`
// after the highest seq it holds. Messages are kept by seq, so nothing is shown twice.

import * as api from "./api.js";
import { fileDropTarget, inlineForm } from "./controls.js";
import { PushToggle } from "./push.js";
import { ChatSocket } from "./socket.js";
import { Store } from "./store.js";
import { TypingNotifier } from "./typing.js";
import * as ui from "./ui.js";

const $ = (id) => document.getElementById(id);
const PAGE_SIZE = 50;

let store = null;
let socket = null;
let activeConv = null; // the conversation shown, or null
let draftPeer = null; // a direct chat being started: the username, before its first message
let groupPanelOpen = false;
let connection = { state: "connecting", retryAt: 0 };
let push = null;
const typing = new TypingNotifier((conv, state) => {
  if (socket) socket.notify("typing", { conv, state });
});

// ---- starting and stopping --------------------------------------------------------------

function boot() {
  push = new PushToggle($("push-toggle"), $("push-status"));
  wireAuthForm();
  wireAppControls();
  const session = api.savedSession();
  if (session) startApp(session);
  else showAuth();
}

function showAuth(message = "") {
  $("app-screen").hidden = true;
  $("auth-screen").hidden = false;
  $("auth-error").textContent = message;
  $("auth-username").focus();
}

function startApp(session) {
  store = new Store(session.user);
  activeConv = null;
  draftPeer = null;
  $("auth-screen").hidden = true;
  $("app-screen").hidden = false;
  $("me-name").textContent = session.user;
  $("me-name").title = `Signed in as ${session.user}`;
  push.refresh();
  socket = new ChatSocket(session.token, {
    onEvent: handleEvent,
    onReady: () => synchronize(),
    onState: (state, detail = {}) => {
      connection = { state, retryAt: detail.retryAt || 0 };
      renderConnection();
    },
    onUnauthorized: () => endSession("Your session has ended. Please sign in again."),
  });
  socket.connect();
  renderAll();
}

function endSession(message) {
  typing.reset();
  if (socket) socket.close();
  socket = null;
  store = null;
  api.forgetSession();
  $("message-list").replaceChildren();
  $("conversation-list").replaceChildren();
  closeChat();
  document.title = "chatd";
  showAuth(message);
}

async function signOut() {
  try {
    await push.disable();
  } catch {
    // The subscription dies with the session on the server anyway.
  }
  try {
    await api.logout();
  } catch {
    // Offline or already revoked: forgetting the token locally is what matters.
  }
  endSession("");
}

function wireAuthForm() {
  const form = $("auth-form");
  const credentials = () => [$("auth-username").value.trim(), $("auth-password").value];
  const run = async (action) => {
    const [username, password] = credentials();
    $("auth-error").textContent = "";
    if (!username || !password) {
      $("auth-error").textContent = "Enter a username and a password.";
      return;
    }
    for (const b of form.querySelectorAll("button")) b.disabled = true;
    try {
      if (action === "register") await api.register(username, password);
      const { token, user } = await api.login(username, password);
      api.saveSession(token, user);
      $("auth-password").value = "";
      startApp({ token, user });
    } catch (error) {
      $("auth-error").textContent = error.message;
    } finally {
      for (const b of form.querySelectorAll("button")) b.disabled = false;
    }
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    run("login");
  });
  $("register-button").addEventListener("click", () => run("register"));
}

// ---- keeping up with the server ---------------------------------------------------------

let syncing = null;

// After every hello: the list, presence, and whatever was missed while away.
function synchronize() {
  if (!syncing) {
    syncing = (async () => {
      try {
        await refreshConversations();
        await refreshContacts();
        for (const c of store.conversations.values()) {
          if (c.loadedFrom !== null) await catchUp(c);
          acknowledge(c);
        }
        openFromHash();
        if (activeConv && store.conversations.get(activeConv)?.loadedFrom === null) {
          await loadOlder(store.conversations.get(activeConv));
        }
        flushOutbox();
      } catch (error) {
        // The socket dropped mid-way; the next hello starts over.
        console.warn("catch-up interrupted:", error.message);
      } finally {
        syncing = null;
        renderAll();
      }
    })();
  }
  return syncing;
}

async function refreshConversations() {
  const { conversations } = await socket.request("conversations");
  const ids = new Set();
  for (const summary of conversations) {
    store.applySummary(summary);
    ids.add(summary.conv);
  }
  store.retainOnly(ids);
  if (activeConv && !ids.has(activeConv)) closeChat();
  if (draftPeer && store.directWith(draftPeer)) {
    // The draft's first message created the conversation (or the other side did).
    const conv = store.directWith(draftPeer).conv;
    for (const m of store.outbox) if (!m.conv && m.to === draftPeer) m.conv = conv;
    draftPeer = null;
    activeConv = conv;
    const c = store.conversations.get(conv);
    if (c.loadedFrom === null) loadOlder(c);
  }
  renderAll();
}

async function refreshContacts() {
  const { contacts } = await socket.request("contacts");
  for (const contact of contacts) store.setPresence(contact.user, contact.status, contact.last_seen);
}

// Everything after the highest seq held, page by page.
async function catchUp(c) {
  for (;;) {
    const after = store.highestHeld(c);
    if (after >= c.lastSeq && after > 0) return;
    const reply = await socket.request("history", { conv: c.conv, after, limit: 100 });
    store.addMessages(c.conv, reply.messages);
    if (!reply.more) return;
  }
}

// One page before the oldest message held (the newest page the first time).
async function loadOlder(c) {
  if (c.loading || !c.moreBefore) return;
  c.loading = true;
  if (c.conv === activeConv) renderHistoryState(c);
  const box = $("messages");
  const fromBottom = box.scrollHeight - box.scrollTop;
  try {
    const fields = { conv: c.conv, limit: PAGE_SIZE };
    if (c.loadedFrom !== null) fields.before = c.loadedFrom;
    const reply = await socket.request("history", fields);
    const first = c.loadedFrom === null;
    store.addMessages(c.conv, reply.messages);
    const seqs = reply.messages.map((m) => m.seq);
    if (seqs.length) c.loadedFrom = Math.min(c.loadedFrom ?? Infinity, ...seqs);
    else if (c.loadedFrom === null) c.loadedFrom = 0;
    c.moreBefore = reply.more;
    if (first) await catchUp(c); // a live message could have landed above the page
    c.loading = false;
    if (c.conv === activeConv) {
      renderChat({ keepFromBottom: first ? null : fromBottom });
      acknowledge(c);
    }
  } catch (error) {
    c.loading = false;
    if (c.conv === activeConv) renderHistoryState(c, error.message);
    return;
  }
  // Not enough to scroll yet: fetch another page, so scrolling up can reach the beginning.
  if (c.conv === activeConv && c.moreBefore && box.scrollHeight <= box.clientHeight) {
    await loadOlder(c);
  }
}

function handleEvent(event) {
  if (!store) return;
  switch (event.type) {
    case "message":
      return onMessage(event);
    case "receipt":
      store.applyReceipt(event);
      return renderAll();
    case "presence":
      store.setPresence(event.user, event.status, event.last_seen);
      return renderAll();
    case "typing":
      store.setTyping(event.conv, event.user, event.state);
      renderAll();
      // Repaint when a "start" with no "stop" expires.
      setTimeout(renderAll, 6500);
      return;
    case "conversation":
      refreshConversations()
        .then(refreshContacts)
        .catch(() => {});
      return;
    default:
  }
}

function onMessage(event) {
  const { type, ...message } = event;
  const c = store.conversation(message.conv);
  const gap = c.loadedFrom !== null && message.seq > store.highestHeld(c) + 1;
  const added = store.addMessages(message.conv, [message]);
  if (!added) return;
  c.typing.delete(message.from);
  if (message.kind === "system" && leftBy(message)) {
    store.conversations.delete(message.conv);
    if (activeConv === message.conv) closeChat();
    return renderAll();
  }
  if (message.from !== store.me && !isSeen(c)) c.unread += 1;
  if (gap) catchUp(c).then(renderAll, () => {});
  acknowledge(c);
  renderAll();
}

// This user was removed from the group, or left it from another device.
function leftBy(message) {
  const e = message.event || {};
  return (e.action === "remove" || e.action === "leave") && (e.users || []).includes(store.me);
}

// ---- receipts ---------------------------------------------------------------------------

function isSeen(c) {
  return c.conv === activeConv && document.visibilityState === "visible";
}

// Tell the server what this device has received and what the user has seen. One request
// per marker at a time; a marker already at the server is not sent again.
function acknowledge(c) {
  const top = Math.min(store.highestHeld(c) || c.lastSeq, c.lastSeq) || c.lastSeq;
  if (!top || !socket || !socket.ready) return;
  const mine = store.myMarkers(c);
  const kind = isSeen(c) ? "read" : "delivered";
  const marker = kind === "read" ? mine.read : mine.delivered;
  const asked = kind === "read" ? c.askedRead : c.askedDelivered;
  if (top <= marker || top <= asked) return;
  if (kind === "read") {
    c.askedRead = top;
    c.unread = 0;
  }
  c.askedDelivered = Math.max(c.askedDelivered, top);
  socket.request("receipt", { conv: c.conv, kind, seq: top }).then(
    (reply) => {
      mine.delivered = Math.max(mine.delivered, reply.delivered);
      mine.read = Math.max(mine.read, reply.read);
    },
    () => {
      // Lost with the connection: the next synchronize() asks again.
      c.askedRead = 0;
      c.askedDelivered = 0;
    },
  );
}

document.addEventListener("visibilitychange", () => {
  const c = activeConv && store && store.conversations.get(activeConv);
  if (c) {
    acknowledge(c);
    renderAll();
  }
});

// ---- sending ----------------------------------------------------------------------------

function newClientId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return [...crypto.getRandomValues(new Uint8Array(16))]
    .map((b) => b.toString(16).padStart(2, "0"))
    .join("");
}

function queueMessage(body, media = []) {
  const out = {
    client_id: newClientId(),
    conv: activeConv,
    to: activeConv ? null : draftPeer,
    kind: "text",
    from: store.me,
    ts: Date.now(),
    body,
    media,
    error: null,
  };
  store.outbox.push(out);
  renderChat({ toBottom: true });
  flushOutbox();
}

let flushing = false;

// Sends what is waiting, one at a time and in order. A message whose reply was lost is sent
// again with the same client_id: the server stores it once and answers `duplicate`.
async function flushOutbox() {
  if (flushing) return;
  flushing = true;
  try {
    while (socket && socket.ready) {
      const out = store.outbox.find((m) => !m.error);
      if (!out) break;
      const fields = { client_id: out.client_id, body: out.body };
      if (out.conv) fields.conv = out.conv;
      else fields.to = out.to;
      if (out.media.length) fields.media = out.media.map((m) => m.id);
      let reply;
      try {
        reply = await socket.request("send", fields);
      } catch (error) {
        if (error.code === "disconnected" || error.code === "timeout") break;
        if (error.code === "rate_limited") {
          await new Promise((r) => setTimeout(r, 1000 * (error.retryAfter || 1)));
          continue;
        }
        out.error = error.message;
        renderChat();
        continue;
      }
      store.outbox.splice(store.outbox.indexOf(out), 1);
      const { conv, seq, msg_id, ts } = reply;
      const message = { conv, seq, msg_id, kind: "text", from: store.me, ts, reply_to: null };
      Object.assign(message, { client_id: out.client_id, body: out.body, media: out.media });
      if (!store.conversations.has(conv)) await refreshConversations();
      store.addMessages(conv, [message]);
      const c = store.conversation(conv);
      const me = store.myMarkers(c);
      me.delivered = Math.max(me.delivered, seq);
      me.read = Math.max(me.read, seq);
      for (const m of store.outbox) if (!m.conv && m.to === out.to) m.conv = conv;
      if (!activeConv && draftPeer && draftPeer === out.to) {
        draftPeer = null;
        activeConv = conv;
        if (c.loadedFrom === null) loadOlder(c);
      }
      renderAll({ toBottom: conv === activeConv });
    }
  } finally {
    flushing = false;
  }
}

function outgoingFor(conv, peer) {
  return store.outbox.filter((m) => (conv ? m.conv === conv : !m.conv && m.to === peer));
}

// ---- media ------------------------------------------------------------------------------

async function uploadAndSend(files) {
  if (!activeConv && !draftPeer) return;
  const box = $("uploads");
  const media = [];
  for (const file of files) {
    const line = ui.el("p", "upload", `Uploading ${file.name}…`);
    box.append(line);
    try {
      const up = await api.uploadMedia(file);
      const item = { id: up.media_id, mime: up.mime, size: up.size, filename: up.filename };
      item.sha256 = up.sha256;
      if (up.width) Object.assign(item, { width: up.width, height: up.height });
      media.push(item);
      line.remove();
    } catch (error) {
      line.textContent = `Could not upload ${file.name}: ${error.message}`;
      line.classList.add("error");
      setTimeout(() => line.remove(), 8000);
    }
  }
  // The server takes at most 10 attachments per message.
  for (let i = 0; i < media.length; i += 10) queueMessage("", media.slice(i, i + 10));
}

// ---- group actions ----------------------------------------------------------------------

async function groupAction(type, fields) {
  $("group-error").textContent = "";
  try {
    await socket.request(type, { conv: activeConv, ...fields });
    return true;
  } catch (error) {
    $("group-error").textContent = error.message;
    return false;
  }
}

function parseNames(text) {
  return text
    .split(/[\s,;]+/)
    .map((s) => s.trim().toLowerCase())
    .filter(Boolean);
}

// ---- navigation -------------------------------------------------------------------------

function openConversation(conv) {
  typing.stop();
  activeConv = conv;
  draftPeer = null;
  groupPanelOpen = false;
  document.body.classList.add("chat-open");
  const c = store.conversations.get(conv);
  renderAll({ toBottom: true });
  if (c && c.loadedFrom === null && socket && socket.ready) loadOlder(c);
  else if (c) acknowledge(c);
  $("composer-input").focus();
}

function openDraft(user) {
  typing.stop();
  activeConv = null;
  draftPeer = user;
  groupPanelOpen = false;
  document.body.classList.add("chat-open");
  renderAll();
  $("composer-input").focus();
}

function closeChat() {
  typing.stop();
  activeConv = null;
  draftPeer = null;
  groupPanelOpen = false;
  document.body.classList.remove("chat-open");
  if (store) renderAll();
}

// A notification click opens /#conv=<id>.
function openFromHash() {
  const match = /^#conv=(.+)$/.exec(location.hash);
  if (!match) return;
  const conv = decodeURIComponent(match[1]);
  history.replaceState(null, "", location.pathname);
  if (store.conversations.has(conv)) openConversation(conv);
}

async function startDirectChat(name) {
  const user = name.trim().toLowerCase();
  if (!user) return "Enter a username.";
  if (user === store.me) return "That is you. Pick someone else.";
  const existing = store.directWith(user);
  if (existing) {
    openConversation(existing.conv);
    return null;
  }
  try {
    // Checks that the user exists and follows their presence (a direct chat would anyway).
    await socket.request("add_contact", { user });
  } catch (error) {
    if (error.code === "not_found") return `There is no user called ${user}.`;
    return error.message;
  }
  refreshContacts().then(renderAll, () => {});
  openDraft(user);
  return null;
}

// ---- rendering --------------------------------------------------------------------------

function renderAll(options = {}) {
  if (!store) return;
  const count = ui.renderConversationList(
    $("conversation-list"),
    store,
    activeConv,
    openConversation,
  );
  $("empty-list").hidden = count > 0;
  let unread = 0;
  for (const c of store.conversations.values()) unread += c.unread;
  document.title = unread ? `(${unread}) chatd` : "chatd";
  renderChat(options);
}

function renderChat({ toBottom = false, keepFromBottom = null } = {}) {
  const c = activeConv ? store.conversations.get(activeConv) : null;
  const open = Boolean(c || draftPeer);
  $("chat").hidden = !open;
  $("no-chat").hidden = open;
  if (!open) return;

  const box = $("messages");
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 60;
  const previousTop = box.scrollTop;

  if (c) {
    $("chat-title").textContent = store.displayName(c);
    $("info-button").hidden = c.kind !== "group";
    const typists = store.typists(c);
    $("typing").textContent = ui.typingText(c, typists);
    $("chat-subtitle").textContent = subtitle(c);
    ui.renderMessages($("message-list"), store, c, outgoingFor(c.conv, null), discard);
    renderHistoryState(c);
  } else {
    $("chat-title").textContent = draftPeer;
    $("info-button").hidden = true;
    $("typing").textContent = "";
    $("chat-subtitle").textContent = ui.lastSeenText(store.presence.get(draftPeer));
    const outgoing = outgoingFor(null, draftPeer);
    ui.renderMessages($("message-list"), store, draftConversation(), outgoing, discard);
    $("history-state").textContent = "Say hello: your first message starts the conversation.";
  }
  renderGroupPanel(c);

  if (keepFromBottom !== null) box.scrollTop = box.scrollHeight - keepFromBottom;
  else if (toBottom || atBottom) box.scrollTop = box.scrollHeight;
  else box.scrollTop = previousTop;
}

// A message the server refused (too long, not allowed) is dropped by the user.
function discard(out) {
  const at = store.outbox.indexOf(out);
  if (at >= 0) store.outbox.splice(at, 1);
  renderChat();
}

function draftConversation() {
  return {
    conv: null,
    kind: "direct",
    members: [],
    messages: new Map(),
    typing: new Map(),
  };
}

function subtitle(c) {
  if (c.kind === "group") {
    const names = c.members.map((m) => (m.user === store.me ? "you" : m.user));
    return `${c.members.length} members: ${names.join(", ")}`;
  }
  const peer = store.peer(c);
  return peer ? ui.lastSeenText(store.presence.get(peer)) : "";
}

function renderHistoryState(c, error = null) {
  let text = "";
  if (error) text = `Could not load older messages: ${error}`;
  else if (c.loading) text = "Loading…";
  else if (c.loadedFrom !== null && !c.moreBefore) text = "This is the beginning of the conversation.";
  $("history-state").textContent = text;
}

function renderGroupPanel(c) {
  const show = Boolean(c && c.kind === "group" && groupPanelOpen);
  $("group-panel").hidden = !show;
  $("info-button").setAttribute("aria-expanded", String(show));
  if (!show) return;
  const role = ui.renderMembers($("member-list"), store, c, {
    remove: (user) => groupAction("remove_member", { user }),
    setRole: (user, newRole) => groupAction("set_role", { user, role: newRole }),
  });
  const manager = role === "owner" || role === "admin";
  $("rename-form").hidden = !manager;
  $("add-member-form").hidden = !manager;
  if (document.activeElement !== $("rename-title")) $("rename-title").value = c.title || "";
}

let connectionTicker = null;

function renderConnection() {
  const node = $("connection-state");
  clearInterval(connectionTicker);
  node.dataset.state = connection.state;
  node.replaceChildren();
  if (connection.state === "online") {
    node.textContent = "";
    node.title = "Connected";
    return;
  }
  if (connection.state === "connecting") {
    node.textContent = "Connecting…";
    return;
  }
  const paint = () => {
    const seconds = Math.max(0, Math.ceil((connection.retryAt - Date.now()) / 1000));
    const retry = ui.el("button", "link", "Retry now");
    retry.type = "button";
    retry.addEventListener("click", () => socket && socket.retryNow());
    node.replaceChildren(`Offline, retrying in ${seconds} s `, retry);
  };
  paint();
  connectionTicker = setInterval(paint, 1000);
}

// ---- controls ---------------------------------------------------------------------------

function wireAppControls() {
  $("menu-button").addEventListener("click", () => {
    const menu = $("menu");
    menu.hidden = !menu.hidden;
    $("menu-button").setAttribute("aria-expanded", String(!menu.hidden));
  });
  $("logout-button").addEventListener("click", signOut);

  inlineForm($("new-chat-form"), $("new-chat-button"), async () => {
    const problem = await startDirectChat($("new-chat-user").value);
    if (problem) return problem;
    $("new-chat-user").value = "";
    return null;
  });
  inlineForm($("new-group-form"), $("new-group-button"), async () => {
    const title = $("new-group-title").value.trim();
    if (!title) return "Give the group a name.";
    try {
      const { conv } = await socket.request("create_group", {
        title,
        members: parseNames($("new-group-members").value),
      });
      await refreshConversations();
      await refreshContacts();
      $("new-group-title").value = "";
      $("new-group-members").value = "";
      openConversation(conv);
      return null;
    } catch (error) {
      return error.message;
    }
  });

  $("back-button").addEventListener("click", closeChat);
  $("info-button").addEventListener("click", () => {
    groupPanelOpen = !groupPanelOpen;
    renderChat();
  });
  $("rename-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const title = $("rename-title").value.trim();
    if (title) await groupAction("update_group", { title });
  });
  $("add-member-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const members = parseNames($("add-member-user").value);
    if (members.length && (await groupAction("add_members", { members }))) {
      $("add-member-user").value = "";
    }
  });
  $("leave-button").addEventListener("click", async () => {
    const conv = activeConv;
    if (await groupAction("leave", {})) {
      store.conversations.delete(conv);
      closeChat();
    }
  });

  const input = $("composer-input");
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const body = input.value;
    if (!body.trim() || !store) return;
    input.value = "";
    fitComposer();
    typing.stop();
    queueMessage(body);
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  input.addEventListener("input", () => {
    fitComposer();
    if (input.value && activeConv) typing.keystroke(activeConv);
    else typing.stop();
  });

  $("attach-button").addEventListener("click", () => $("file-input").click());
  $("file-input").addEventListener("change", () => {
    const files = [...$("file-input").files];
    $("file-input").value = "";
    if (files.length) uploadAndSend(files);
  });
  fileDropTarget($("chat"), $("drop-hint"), uploadAndSend);

  $("messages").addEventListener("scroll", () => {
    const c = activeConv && store && store.conversations.get(activeConv);
    if (c && $("messages").scrollTop < 80 && c.moreBefore && c.loadedFrom !== null) loadOlder(c);
  });

  window.addEventListener("online", () => socket && socket.retryNow());
  // A notification clicked while the page is open changes only the hash.
  window.addEventListener("hashchange", () => store && openFromHash());
}

// The message box grows with its text (up to the CSS max-height), like most chat apps.
function fitComposer() {
  const input = $("composer-input");
  input.style.height = "auto";
  input.style.height = `${input.scrollHeight + 2}px`;
}

boot();
