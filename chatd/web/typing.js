// "Typing…" for the others: `start` when the user types (repeated every few seconds while
// they keep going), `stop` after a pause or when the message is sent.
//
// chatd drops typing frames past 2 a second per connection (bursts of 4) without a word, so
// this keeps under that itself: frames wait for the budget, and only the latest state per
// conversation is sent (a "start" then "stop" still waiting is just the "stop").

const REPEAT_MS = 3000; // resend "start" this often while the user keeps typing
const IDLE_MS = 4000; // send "stop" after this long without a keystroke
const RATE = 2; // frames per second
const BURST = 3; // one below the server's, to stay clear of its clock

export class TypingNotifier {
  // send(conv, state): puts one typing frame on the wire.
  constructor(send) {
    this.send = send;
    this.startedAt = 0; // when "start" was last sent for `conv`; 0 when stopped
    this.conv = null;
    this.idleTimer = null;
    this.budget = { tokens: BURST, at: Date.now() };
    this.waiting = new Map(); // conv -> "start" | "stop"
    this.drainTimer = null;
  }

  // A keystroke in the message box of `conv`.
  keystroke(conv) {
    if (this.conv && this.conv !== conv) this.stop();
    this.conv = conv;
    if (Date.now() - this.startedAt > REPEAT_MS) {
      this.queue(conv, "start");
      this.startedAt = Date.now();
    }
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => this.stop(), IDLE_MS);
  }

  // Sent, emptied, or the user left the conversation.
  stop() {
    clearTimeout(this.idleTimer);
    if (this.startedAt && this.conv) this.queue(this.conv, "stop");
    this.startedAt = 0;
    this.conv = null;
  }

  queue(conv, state) {
    this.waiting.delete(conv); // re-inserted last: conversations are served in order
    this.waiting.set(conv, state);
    this.drain();
  }

  drain() {
    clearTimeout(this.drainTimer);
    this.drainTimer = null;
    while (this.waiting.size) {
      const now = Date.now();
      const refill = ((now - this.budget.at) / 1000) * RATE;
      this.budget.tokens = Math.min(BURST, this.budget.tokens + refill);
      this.budget.at = now;
      if (this.budget.tokens < 1) {
        const wait = ((1 - this.budget.tokens) / RATE) * 1000 + 20;
        this.drainTimer = setTimeout(() => this.drain(), wait);
        return;
      }
      this.budget.tokens -= 1;
      const [conv, state] = this.waiting.entries().next().value;
      this.waiting.delete(conv);
      this.send(conv, state);
    }
  }

  // Signing out: nothing more goes out.
  reset() {
    clearTimeout(this.idleTimer);
    clearTimeout(this.drainTimer);
    this.waiting.clear();
    this.startedAt = 0;
    this.conv = null;
  }
}
