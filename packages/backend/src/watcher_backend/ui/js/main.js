// Hash router and page chrome (breadcrumbs, language switch, sign-out).
import { AuthError, ApiError, signOut } from './api.js';
import { h, clear } from './dom.js';
import { lang, setLang, t } from './i18n.js';
import * as login from './pages/login.js';
import * as classes from './pages/classes.js';
import * as klass from './pages/class.js';
import * as assignment from './pages/assignment.js';
import * as student from './pages/student.js';
import * as replay from './pages/replay.js';
import * as run from './pages/run.js';

const ROUTES = [
  [/^login$/, login, []],
  [/^$/, classes, []],
  [/^c\/([^/]+)$/, klass, ['classDiv']],
  [/^c\/([^/]+)\/([^/]+)$/, assignment, ['classDiv', 'hw']],
  [/^c\/([^/]+)\/([^/]+)\/([^/]+)$/, student, ['classDiv', 'hw', 'sid']],
  [/^c\/([^/]+)\/([^/]+)\/([^/]+)\/replay$/, replay, ['classDiv', 'hw', 'sid']],
  [/^run\/(\d+)$/, run, ['runId']],
];

const app = document.getElementById('app');
const crumbs = document.getElementById('crumbs');
const langBtn = document.getElementById('lang');
const logoutBtn = document.getElementById('logout');
let generation = 0;
let notice = null; // shown once on the login page (e.g. "session expired")
let returnTo = null; // where a signed-out visitor was going: back there after sign-in

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, '');
  const [path, query = ''] = raw.split('?');
  return { path, query: new URLSearchParams(query) };
}

export function navigate(hash, { replace = false } = {}) {
  if (replace) history.replaceState(null, '', hash);
  else history.pushState(null, '', hash);
  render();
}

function setCrumbs(items) {
  clear(crumbs);
  items.forEach(([label, href], i) => {
    if (i) crumbs.append(h('span', { class: 'sep', 'aria-hidden': 'true' }, '›'));
    crumbs.append(href ? h('a', { href }, label) : h('span', { class: 'here' }, label));
  });
}

function chrome() {
  document.documentElement.lang = lang();
  langBtn.textContent = t('lang.other');
  logoutBtn.textContent = t('auth.logout');
}

async function render() {
  const gen = ++generation;
  chrome();
  const { path, query } = parseHash();
  const found = ROUTES.map(([re, page, names]) => [path.match(re), page, names]).find(([m]) => m);
  const isLogin = path === 'login';
  logoutBtn.hidden = isLogin;
  const el = h('div', { class: 'page' });
  clear(app).append(el);
  if (!found) {
    setCrumbs([]);
    el.append(h('p', { class: 'empty' }, t('app.notFound')));
    return;
  }
  const [m, page, names] = found;
  const params = Object.fromEntries(names.map((n, i) => [n, decodeURIComponent(m[i + 1])]));
  const ctx = {
    el, params, query, setCrumbs, navigate,
    alive: () => gen === generation,
    notice: isLogin ? notice : null,
    next: returnTo || '#/',
  };
  notice = null;
  if (isLogin) returnTo = null;
  setCrumbs([]);
  try {
    await page.render(ctx);
  } catch (err) {
    if (gen !== generation) return;
    if (err instanceof AuthError) {
      notice = path === '' ? null : t('auth.expired');
      returnTo = path === '' ? null : location.hash;
      navigate('#/login', { replace: true });
      return;
    }
    console.error(err);
    clear(el).append(
      h('div', { class: 'error', role: 'alert' },
        h('strong', {}, t('app.error')), ' ',
        err instanceof ApiError ? `${err.status}: ${err.message}` : String(err.message || err),
        ' ', h('button', { type: 'button', onclick: render }, t('app.retry'))),
    );
  }
}

langBtn.addEventListener('click', () => {
  setLang(lang() === 'ko' ? 'en' : 'ko');
  render();
});
logoutBtn.addEventListener('click', async () => {
  await signOut();
  returnTo = null;
  navigate('#/login');
});
// popstate fires for links to another #hash and for back/forward; hashchange would fire
// as well for the same navigation and fetch everything twice.
window.addEventListener('popstate', render);
render();
