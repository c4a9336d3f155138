// Web Push through the service worker (docs/push.md): one checkbox turns notifications for
// this browser on (subscribe, hand the subscription to chatd) and off (delete it on the
// server and unsubscribe the browser).

import * as api from "./api.js";

const PUSH_ID_KEY = "chatd-push-id";

function keyBytes(base64url) {
  const b64 = base64url.replace(/-/g, "+").replace(/_/g, "/");
  const raw = atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4));
  return Uint8Array.from(raw, (c) => c.charCodeAt(0));
}

function supported() {
  return "serviceWorker" in navigator && "PushManager" in window && "Notification" in window;
}

export class PushToggle {
  constructor(checkbox, status) {
    this.checkbox = checkbox;
    this.status = status;
    this.busy = false;
    checkbox.addEventListener("change", () => this.changed());
  }

  say(text) {
    this.status.textContent = text;
  }

  // Shows the current state: on when this browser holds a subscription chatd knows about.
  async refresh() {
    if (!supported()) {
      this.checkbox.checked = false;
      this.checkbox.disabled = true;
      this.say("This browser cannot receive push notifications.");
      return;
    }
    this.checkbox.checked = Boolean(localStorage.getItem(PUSH_ID_KEY));
    this.checkbox.disabled = false;
    this.say(
      this.checkbox.checked
        ? "On: you are notified of messages while chatd is closed."
        : "Off: turn on to be notified of messages while chatd is closed.",
    );
  }

  async changed() {
    if (this.busy) return;
    this.busy = true;
    this.checkbox.disabled = true;
    const wanted = this.checkbox.checked;
    try {
      if (wanted) await this.enable();
      else await this.disable();
      await this.refresh();
    } catch (error) {
      this.checkbox.checked = !wanted;
      this.say(error.message || String(error));
    } finally {
      this.busy = false;
      this.checkbox.disabled = !supported();
    }
  }

  async enable() {
    let key;
    try {
      key = (await api.vapidPublicKey()).public_key;
    } catch (error) {
      if (error.status === 404) throw new Error("Push notifications are not enabled on this server.");
      throw error;
    }
    const registration = await navigator.serviceWorker.register("/sw.js");
    await navigator.serviceWorker.ready;
    if ((await Notification.requestPermission()) !== "granted") {
      throw new Error("Notifications are blocked for this site in the browser's settings.");
    }
    let subscription;
    try {
      subscription = await registration.pushManager.subscribe({
        userVisibleOnly: true,
        applicationServerKey: keyBytes(key),
      });
    } catch (error) {
      throw new Error(`The browser could not subscribe: ${error.message || error}`);
    }
    const { id } = await api.addPushSubscription(subscription.toJSON());
    localStorage.setItem(PUSH_ID_KEY, id);
  }

  // Also used at sign-out, so that a shared computer stops receiving someone's messages.
  async disable() {
    const id = localStorage.getItem(PUSH_ID_KEY);
    if (id) {
      try {
        await api.deletePushSubscription(id);
      } catch (error) {
        if (error.status !== 404) throw error; // 404: already gone on the server
      }
      localStorage.removeItem(PUSH_ID_KEY);
    }
    if (supported()) {
      const registration = await navigator.serviceWorker.getRegistration("/");
      const subscription = registration && (await registration.pushManager.getSubscription());
      if (subscription) await subscription.unsubscribe();
    }
  }
}
