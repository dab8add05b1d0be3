// The REST API: the envelope, the token (in sessionStorage only: never in local storage or a cookie) and 401 handling.

const KEY = 'modserv.token';
let askToken = null;

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.message || `the server answered HTTP ${status}`);
    this.status = status;
    this.code = body?.code;
    this.details = body?.details;
  }
}

export function onTokenNeeded(fn) { askToken = fn; }
export function token() { return sessionStorage.getItem(KEY) || ''; }
export function setToken(value) {
  if (value) sessionStorage.setItem(KEY, value);
  else sessionStorage.removeItem(KEY);
}

export function authHeaders(extra = {}) {
  const t = token();
  return t ? { ...extra, Authorization: `Bearer ${t}` } : { ...extra };
}

// Ask the user for a token (the server answered 401 with `message`); resolves once one is typed in.
export async function needToken(message) {
  if (!askToken) throw new ApiError(401, { message });
  await askToken(message);
}

// One API call; answers the envelope ({code, message, data}); a 401 asks for a token and tries again.
export async function request(method, path, body, { signal } = {}) {
  for (;;) {
    const init = { method, headers: authHeaders({ Accept: 'application/json' }), signal };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const r = await fetch(path, init);
    let envelope = null;
    try { envelope = await r.json(); } catch { envelope = null; }
    if (r.status === 401) {
      await needToken(envelope?.message);
      continue;
    }
    if (!r.ok || !envelope || envelope.code !== 0) throw new ApiError(r.status, envelope);
    envelope.status = r.status;
    return envelope;
  }
}

export const get = (path, opts) => request('GET', path, undefined, opts);
export const post = (path, body, opts) => request('POST', path, body, opts);
export const del = (path, opts) => request('DELETE', path, undefined, opts);
export const sid = (id) => encodeURIComponent(id);
