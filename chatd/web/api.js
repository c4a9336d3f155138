// The HTTP half of chatd's API (docs/protocol.md section 5): accounts, sessions, media, push.
// Every call answers parsed JSON or throws an ApiError carrying the server's code and message.

const TOKEN_KEY = "chatd-token";
const USER_KEY = "chatd-user";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function savedSession() {
  const token = localStorage.getItem(TOKEN_KEY);
  const user = localStorage.getItem(USER_KEY);
  return token && user ? { token, user } : null;
}

export function saveSession(token, user) {
  localStorage.setItem(TOKEN_KEY, token);
  localStorage.setItem(USER_KEY, user);
}

export function forgetSession() {
  localStorage.removeItem(TOKEN_KEY);
  localStorage.removeItem(USER_KEY);
}

function authHeaders() {
  const token = localStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function failure(response) {
  let code = "internal";
  let message = `the server answered ${response.status}`;
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch {
    // Not JSON (a proxy's error page): keep the generic message.
  }
  return new ApiError(response.status, code, message);
}

async function request(method, path, { json, body, headers = {} } = {}) {
  const init = { method, headers: { ...authHeaders(), ...headers } };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (body !== undefined) {
    init.body = body;
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, "unavailable", "cannot reach the server");
  }
  if (!response.ok) throw await failure(response);
  if (response.status === 204) return null;
  return response.json();
}

export function register(username, password) {
  return request("POST", "/api/v1/users", { json: { username, password } });
}

export function login(username, password) {
  return request("POST", "/api/v1/sessions", { json: { username, password, device: "web" } });
}

export function logout() {
  return request("DELETE", "/api/v1/sessions/current");
}

export function uploadMedia(file) {
  const name = encodeURIComponent(file.name || "file");
  return request("POST", `/api/v1/media?filename=${name}`, {
    body: file,
    headers: { "Content-Type": file.type || "application/octet-stream" },
  });
}

// <img src> cannot send the bearer token, so media is fetched here and shown through blob:
// URLs. Each URL is made once per id and kept for the page's life (media never changes).
const blobUrls = new Map();

export async function mediaBlobUrl(path) {
  if (!blobUrls.has(path)) {
    const pending = (async () => {
      let response;
      try {
        response = await fetch(path, { headers: authHeaders() });
      } catch {
        throw new ApiError(0, "unavailable", "cannot reach the server");
      }
      if (!response.ok) throw await failure(response);
      return URL.createObjectURL(await response.blob());
    })();
    blobUrls.set(path, pending);
    pending.catch(() => blobUrls.delete(path)); // let a later render try again
  }
  return blobUrls.get(path);
}

export function vapidPublicKey() {
  return request("GET", "/api/v1/push/vapid-public-key");
}

export function addPushSubscription(subscription) {
  return request("POST", "/api/v1/push/subscriptions", {
    json: { kind: "webpush", subscription },
  });
}

export function deletePushSubscription(id) {
  return request("DELETE", `/api/v1/push/subscriptions/${encodeURIComponent(id)}`);
}
