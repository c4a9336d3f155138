// chatd's service worker: shows the Web Push notifications chatd sends while the page is
// closed (docs/push.md), and opens the conversation when one is clicked. It caches nothing.

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

self.addEventListener("push", (event) => {
  let n = { title: "chatd", message: "New message" };
  try {
    if (event.data) n = event.data.json();
  } catch {
    // Not JSON: show the generic notification.
  }
  event.waitUntil(
    self.registration.showNotification(n.title || "chatd", {
      body: n.message || "New message",
      tag: n.conv, // one notification per conversation, replaced by newer ones
      renotify: true,
      data: { conv: n.conv, seq: n.seq },
    }),
  );
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const conv = (event.notification.data && event.notification.data.conv) || "";
  const target = conv ? `/#conv=${encodeURIComponent(conv)}` : "/";
  event.waitUntil(
    (async () => {
      const open = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
      for (const client of open) {
        if (new URL(client.url).origin === self.location.origin) {
          await client.focus();
          return client.navigate(target);
        }
      }
      return self.clients.openWindow(target);
    })(),
  );
});
