// The WebSocket half of chatd's API: one connection to /ws that says hello, matches replies
// to requests by id, hands events to the app, and comes back by itself when it drops.
//
// Reconnecting waits 0.5 s, 1 s, 2 s, ... up to 15 s (with jitter, so a restarted server is
// not hit by every browser in the same millisecond); a successful hello resets the delay.
//
// A connection can also die without a close (a laptop waking up, a new Wi-Fi network): after
// `heartbeat` seconds (from the hello reply) of silence the client sends a `ping`, and a ping
// unanswered within half that (at least 3 s) counts as a drop.

const FIRST_DELAY_MS = 500;
const MAX_DELAY_MS = 15000;
const REQUEST_TIMEOUT_MS = 15000;

export class RequestError extends Error {
  constructor(code, message, extra = {}) {
    super(message);
    this.code = code;
    Object.assign(this, extra);
  }
}

export class ChatSocket {
  // handlers: onEvent(frame), onReady(helloReply), onState(state, detail), onUnauthorized()
  constructor(token, handlers) {
    this.token = token;
    this.handlers = handlers;
    this.ws = null;
    this.ready = false;
    this.nextId = 1;
    this.pending = new Map(); // request id -> {resolve, reject, timer}
    this.delay = FIRST_DELAY_MS;
    this.retryTimer = null;
    this.closed = false;
    this.helloFailedFor = null;
    this.lastHeard = 0;
    this.livenessTimer = null;
  }

  connect() {
    if (this.closed || this.ws) return;
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.handlers.onState("connecting");
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/ws`);
    this.ws = ws;
    ws.onopen = () => this.hello(ws);
    ws.onmessage = (event) => this.receive(event.data);
    ws.onclose = (event) => this.dropped(ws, event.code);
  }

  async hello(ws) {
    try {
      const reply = await this.request("hello", { token: this.token, device: "web" }, true);
      if (ws !== this.ws) return;
      this.ready = true;
      this.delay = FIRST_DELAY_MS;
      this.watchLiveness(ws, reply.heartbeat || 25);
      this.handlers.onState("online");
      this.handlers.onReady(reply);
    } catch (error) {
      if (ws !== this.ws) return;
      if (error.code === "unauthorized") {
        this.close();
        this.handlers.onUnauthorized();
        return;
      }
      // Anything else (unavailable, rate_limited): the server closes the socket (1013, 4429)
      // and the close handler schedules the retry. Older chatd closed an `unavailable` hello
      // with 4401, the code of a bad token: remember that the token was not the problem.
      this.helloFailedFor = error.code;
      if (error.code === "timeout") {
        // No answer at all (a server stuck mid-restart): give up on this socket ourselves.
        this.dropped(ws, 1006);
        ws.close();
      }
    }
  }

  watchLiveness(ws, heartbeat) {
    clearInterval(this.livenessTimer);
    const quietMs = heartbeat * 1000;
    const answerMs = Math.max(3000, quietMs / 2);
    this.livenessTimer = setInterval(async () => {
      if (ws !== this.ws || Date.now() - this.lastHeard < quietMs) return;
      try {
        await this.request("ping", {}, false, answerMs);
      } catch (error) {
        if (ws === this.ws && error.code === "timeout") {
          this.dropped(ws, 1006);
          ws.close();
        }
      }
    }, Math.min(quietMs, 5000));
  }

  receive(text) {
    this.lastHeard = Date.now();
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    if (frame.id !== undefined && frame.id !== null && this.pending.has(frame.id)) {
      const { resolve, reject, timer } = this.pending.get(frame.id);
      this.pending.delete(frame.id);
      clearTimeout(timer);
      if (frame.type === "ok") resolve(frame);
      else reject(new RequestError(frame.code, frame.message, { retryAfter: frame.retry_after }));
      return;
    }
    if (frame.type !== "ok" && frame.type !== "error") this.handlers.onEvent(frame);
  }

  dropped(ws, code) {
    if (ws !== this.ws) return;
    clearInterval(this.livenessTimer);
    this.ws = null;
    this.ready = false;
    this.failPending();
    if (this.closed) return;
    const tokenRefused = code === 4401 && !this.helloFailedFor;
    this.helloFailedFor = null;
    if (tokenRefused) {
      // Hello refused or session revoked: the token is no good any more.
      this.close();
      this.handlers.onUnauthorized();
      return;
    }
    const wait = this.delay * (0.8 + Math.random() * 0.4);
    this.delay = Math.min(this.delay * 2, MAX_DELAY_MS);
    this.handlers.onState("offline", { retryAt: Date.now() + wait });
    this.retryTimer = setTimeout(() => this.connect(), wait);
  }

  failPending() {
    for (const { reject, timer } of this.pending.values()) {
      clearTimeout(timer);
      reject(new RequestError("disconnected", "the connection was lost"));
    }
    this.pending.clear();
  }

  // Skip the wait and try now (the "Retry now" link, the browser coming back online).
  retryNow() {
    if (!this.ws && !this.closed) this.connect();
  }

  request(type, fields = {}, beforeHello = false, timeoutMs = REQUEST_TIMEOUT_MS) {
    return new Promise((resolve, reject) => {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN || (!this.ready && !beforeHello)) {
        reject(new RequestError("disconnected", "not connected"));
        return;
      }
      const id = String(this.nextId++);
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new RequestError("timeout", "the server did not answer"));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      this.ws.send(JSON.stringify({ type, id, ...fields }));
    });
  }

  // Fire and forget (typing): no id, so the server answers only if it fails.
  notify(type, fields = {}) {
    if (this.ready && this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify({ type, ...fields }));
    }
  }

  close() {
    this.closed = true;
    clearTimeout(this.retryTimer);
    clearInterval(this.livenessTimer);
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.close(1000);
    }
    this.ready = false;
    this.failPending();
  }
}
