// Calls to the archive's API. Every call sends the visitor's bearer token, when they signed in;
// the token lives in sessionStorage (this tab only, gone when it closes), never in a URL.
// Paths are relative to the page, so the page works behind a proxy that serves it under a prefix.

const TOKEN_KEY = 'imaging-archive.token';

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

export function setToken(value) {
  sessionStorage.setItem(TOKEN_KEY, value);
}

export function clearToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

/** An answer other than 2xx: its status, the server's reason and, for a bad filter, its name. */
export class ApiError extends Error {
  constructor(status, message, field = null) {
    super(message);
    this.status = status;
    this.field = field;
  }
}

function headers(extra = {}) {
  const h = new Headers(extra);
  const t = token();
  if (t) h.set('Authorization', `Bearer ${t}`);
  return h;
}

async function failure(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (body && typeof body.error === 'string') return new ApiError(response.status, body.error, body.field ?? null);
  } catch {
    // not JSON: the server's plain-text reason
  }
  return new ApiError(response.status, text.trim() || `HTTP ${response.status}`);
}

async function call(path, init) {
  const response = await fetch(path, { ...init, credentials: 'omit', cache: 'no-store' });
  if (!response.ok) throw await failure(response);
  return response;
}

export async function getJson(path, { signal } = {}) {
  const response = await call(path, { headers: headers({ Accept: 'application/json' }), signal });
  return response.json();
}

export async function postJson(path, body, { signal } = {}) {
  const response = await call(path, {
    method: 'POST', body: JSON.stringify(body), signal,
    headers: headers({ Accept: 'application/json', 'Content-Type': 'application/json' }),
  });
  return response.json();
}

/** A resource as a Blob (thumbnails, downloads), fetched with the token. */
export async function getBlob(path, accept, { signal } = {}) {
  const response = await call(path, { headers: headers({ Accept: accept }), signal });
  return response.blob();
}
