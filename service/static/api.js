// The public v1 API as the page uses it: the API key (when the server asks for one) on every
// request, and a failed answer turned into an ApiError carrying its problem+json title and detail.

const KEY_STORE = "megasr-api-key";

export class ApiError extends Error {
  constructor(status, title, detail) {
    super(detail || title);
    this.status = status;
    this.title = title;
  }
}

export function apiKey() {
  return localStorage.getItem(KEY_STORE) || "";
}

export function setApiKey(key) {
  if (key) localStorage.setItem(KEY_STORE, key);
  else localStorage.removeItem(KEY_STORE);
}

// fetch() with the key; resolves to the Response of a 2xx answer, or throws an ApiError.
export async function api(path, options = {}) {
  const key = apiKey();
  const auth = key ? { Authorization: `Bearer ${key}` } : {};
  let response;
  try {
    response = await fetch(path, { ...options, headers: { ...auth, ...options.headers } });
  } catch {
    throw new ApiError(0, "The server cannot be reached", "Check the connection and try again.");
  }
  if (!response.ok) throw await problem(response);
  return response;
}

async function problem(response) {
  let body = {};
  try {
    body = await response.json();
  } catch {
    // not problem+json (a proxy's error page): the status line says enough
  }
  const title = body.title || `HTTP ${response.status} ${response.statusText}`.trim();
  return new ApiError(response.status, title, body.detail || "");
}
