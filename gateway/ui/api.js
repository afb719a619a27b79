// The one way the console talks to the gateway: credentials go in the Authorization header (never in a URL),
// problems come back as ApiError with the API's stable code, and a 401 asks the user to sign in and then repeats
// the request, so nothing typed is lost.

const STORE_KEY = 'fleet.credentials';

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.message || `HTTP ${status}`);
    this.status = status;
    this.code = problem.code || 'http_error';
  }
}

export const credentials = {
  get() {
    const saved = sessionStorage.getItem(STORE_KEY) || localStorage.getItem(STORE_KEY);
    try { return saved ? JSON.parse(saved) : null; } catch { return null; }
  },
  set(value, remember) {
    this.clear();
    (remember ? localStorage : sessionStorage).setItem(STORE_KEY, JSON.stringify(value));
    document.dispatchEvent(new Event('fleet:credentials'));
  },
  clear() {
    sessionStorage.removeItem(STORE_KEY);
    localStorage.removeItem(STORE_KEY);
    document.dispatchEvent(new Event('fleet:credentials'));
  },
  remembered() { return localStorage.getItem(STORE_KEY) !== null; },
};

let askSignIn = async () => { throw new Error('sign-in is not set up'); };
/** The console installs the dialog that resolves once the user has signed in. */
export function onSignInNeeded(ask) { askSignIn = ask; }

function authorization() {
  const c = credentials.get();
  if (!c) return {};
  return { authorization: `Bearer ${c.kind === 'key' ? c.key : c.access}` };
}

/** fetch() with credentials; signs in (or refreshes a token) on 401 and tries again. */
export async function send(path, init = {}) {
  for (let attempt = 0; ; attempt++) {
    const response = await fetch(path, { ...init, headers: { ...init.headers, ...authorization() } });
    if (response.status !== 401 || attempt >= 3) return response;
    const problem = await response.json().catch(() => ({}));
    if (!(await refresh())) await askSignIn(problem.message || 'Sign in to continue.');
  }
}

let me = null;
document.addEventListener('fleet:credentials', () => { me = null; });

/**
 * Who the caller is (`/v1/me`), or null when not signed in; never asks to sign in. Asked once per credential:
 * the navigation and the screens share the answer.
 */
export function whoAmI() {
  me ??= fetch('/v1/me', { headers: { accept: 'application/json', ...authorization() } })
    .then((response) => (response.ok ? response.json() : null), () => null);
  return me;
}

/** A JSON request; throws ApiError for any problem answer. */
export async function api(path, { method = 'GET', json, form, signal } = {}) {
  const init = { method, signal, headers: { accept: 'application/json' } };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers['content-type'] = 'application/json';
  } else if (form) {
    init.body = form;
  }
  const response = await send(path, init);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

/** A blob (file download); throws ApiError for a problem answer. */
export async function blob(path) {
  const response = await send(path);
  if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => ({})));
  return response.blob();
}

let refreshing = null;
async function refresh() {
  const c = credentials.get();
  if (!c || c.kind !== 'token' || !c.refresh) return false;
  refreshing ??= signInWith({ grant_type: 'refresh_token', refresh_token: c.refresh }, c.user, credentials.remembered())
    .then(() => true, () => false)
    .finally(() => { refreshing = null; });
  return refreshing;
}

/** POST /token (password or refresh grant); keeps the new tokens. */
export async function signInWith(fields, user, remember) {
  const response = await fetch('/token', { method: 'POST', body: new URLSearchParams(fields) });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(response.status, body);
  credentials.set({ kind: 'token', access: body.access_token, refresh: body.refresh_token, user }, remember);
}

/**
 * Follows a Server-Sent Events stream with fetch (EventSource cannot send the Authorization header), resuming
 * after the last event id on every reconnect. Calls onEvent({event, id, data}); resolves when the server ends the
 * stream after an `end` event, or when signal aborts.
 */
export async function follow(path, { onEvent, onState, signal, lastId = null }) {
  let ended = false;
  while (!signal.aborted && !ended) {
    try {
      const headers = { accept: 'text/event-stream' };
      if (lastId !== null) headers['last-event-id'] = String(lastId);
      const response = await send(path, { headers, signal });
      if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => ({})));
      onState('live');
      for await (const event of sseEvents(response.body, signal)) {
        if (event.id !== undefined) lastId = event.id;
        if (event.event === 'end') ended = true;
        onEvent(event);
      }
    } catch (e) {
      if (signal.aborted) return;
      if (e instanceof ApiError && e.status < 500) throw e;
    }
    if (!ended && !signal.aborted) {
      onState('reconnecting');
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
}

async function* sseEvents(body, signal) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  signal.addEventListener('abort', () => reader.cancel().catch(() => {}), { once: true });
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const event = parseBlock(block);
      if (event) yield event;
    }
  }
}

function parseBlock(block) {
  const event = { event: 'message', data: '' };
  let data = [];
  for (const line of block.split('\n')) {
    if (!line || line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
    if (field === 'data') data.push(value);
    else if (field === 'event') event.event = value;
    else if (field === 'id') event.id = value;
  }
  if (!data.length) return null;
  try { event.data = JSON.parse(data.join('\n')); } catch { return null; }
  return event;
}
