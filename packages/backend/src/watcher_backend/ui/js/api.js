// Read API client. The session cookie (HttpOnly) rides along on same-origin requests;
// this code never sees a token after sign-in.

export class AuthError extends Error {}
export class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === 'string' ? detail : `HTTP ${status}`);
    this.status = status;
  }
}

const cache = new Map(); // immutable resources (snapshot content, diffs): fetched once

async function request(url, kind) {
  const resp = await fetch(url, { credentials: 'same-origin', headers: { Accept: kind === 'json' ? 'application/json' : '*/*' } });
  if (resp.status === 401) throw new AuthError('unauthorized');
  if (!resp.ok) {
    let detail = null;
    try {
      detail = (await resp.json()).detail;
    } catch {
      /* not JSON */
    }
    throw new ApiError(resp.status, detail);
  }
  if (kind === 'json') return resp.json();
  if (kind === 'text') return resp.text();
  return new Uint8Array(await resp.arrayBuffer());
}

export function url(path, params = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== null && v !== undefined && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

const enc = encodeURIComponent;
export const paths = {
  classes: () => '/api/v1/classes',
  assignments: (c) => `/api/v1/classes/${enc(c)}/assignments`,
  heatmap: (c) => `/api/v1/classes/${enc(c)}/heatmap`,
  summary: (c, hw) => `/api/v1/classes/${enc(c)}/assignments/${enc(hw)}/summary`,
  errors: (c, hw) => `/api/v1/classes/${enc(c)}/assignments/${enc(hw)}/errors`,
  student: (c, hw, s) => `/api/v1/classes/${enc(c)}/assignments/${enc(hw)}/students/${enc(s)}`,
  run: (id) => `/api/v1/runs/${enc(id)}`,
  content: (id) => `/api/v1/snapshots/${enc(id)}/content`,
  diff: () => '/api/v1/diff',
  csv: () => '/api/v1/export/students.csv',
  progsnap2: () => '/api/v1/export/progsnap2',
};

export const getJSON = (u) => request(u, 'json');

export async function getCached(u, kind) {
  if (!cache.has(u)) {
    const p = request(u, kind);
    cache.set(u, p);
    p.catch(() => cache.delete(u));
    if (cache.size > 200) cache.delete(cache.keys().next().value);
  }
  return cache.get(u);
}

/** Snapshot content as text (UTF-8, invalid bytes replaced). */
export async function snapshotText(id) {
  const data = await getCached(paths.content(id), 'bytes');
  return new TextDecoder('utf-8', { fatal: false }).decode(data);
}

export const diffText = (from, to) => getCached(url(paths.diff(), { from, to }), 'text');

export async function signIn(token) {
  const resp = await fetch('/ui/session', {
    method: 'POST',
    credentials: 'same-origin',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ token }),
  });
  return resp.status;
}

export async function signOut() {
  cache.clear();
  await fetch('/ui/logout', { method: 'POST', credentials: 'same-origin' });
}
