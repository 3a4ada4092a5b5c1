// Code replay: step or slide through a file's saved versions; diff any two (A → B).
import { diffText, getJSON, paths, snapshotText, url, ApiError } from '../api.js';
import { h, route, withQuery } from '../dom.js';
import { t } from '../i18n.js';
import { bytes, kst } from '../format.js';
import { codeView, parseUnified, splitView, unifiedView } from '../diff.js';

const MODES = ['code', 'unified', 'split'];

export async function render(ctx) {
  const { el, params, query, setCrumbs } = ctx;
  const { classDiv: c, hw, sid } = params;
  setCrumbs([[t('nav.classes'), '#/'], [c, route('c', c)], [hw, route('c', c, hw)], [sid, route('c', c, hw, sid)], [t('replay.title')]]);
  const base = paths.student(c, hw, sid);
  el.append(h('p', { class: 'muted' }, t('app.loading')));
  const files = await getJSON(`${base}/files`);
  const path = query.get('path') || files[0]?.path;
  if (!path) {
    el.replaceChildren(h('p', { class: 'empty' }, t('app.notFound')));
    return;
  }
  const versions = await getJSON(url(`${base}/files/versions`, { path }));
  if (!ctx.alive()) return;
  if (!versions.length) {
    el.replaceChildren(h('p', { class: 'empty' }, t('app.notFound')));
    return;
  }
  const ids = versions.map((v) => v.snapshot_id);
  const want = Number(query.get('v'));
  const state = {
    i: ids.includes(want) ? ids.indexOf(want) : versions.length - 1,
    a: ids.includes(Number(query.get('a'))) ? Number(query.get('a')) : null,
    mode: MODES.includes(query.get('mode')) ? query.get('mode') : 'code',
  };
  const here = route('c', c, hw, sid, 'replay');

  const fileSelect = h('select', { 'aria-label': t('replay.file'), 'data-testid': 'file-select', onchange: (e) => ctx.navigate(withQuery(here, { path: e.target.value })) },
    files.map((f) => h('option', { value: f.path, selected: f.path === path }, f.path)));
  const slider = h('input', { type: 'range', min: 0, max: versions.length - 1, value: state.i, class: 'slider', 'aria-label': t('replay.title'), 'data-testid': 'slider' });
  const label = h('span', { class: 'version-label', 'data-testid': 'version-label' });
  const meta = h('span', { class: 'muted' });
  const modeButtons = MODES.map((m) => h('button', { type: 'button', class: 'seg', 'data-mode': m, 'data-testid': `mode-${m}`, onclick: () => set({ mode: m }) },
    t(m === 'code' ? 'replay.modeCode' : m === 'unified' ? 'replay.modeUnified' : 'replay.modeSplit')));
  const versionOption = (v, i) => h('option', { value: v.snapshot_id }, `#${i + 1} · ${kst(v.ts)} · ${bytes(v.size)}`);
  // A list box, not a drop-down: Chromium re-measures every option's text whenever a
  // drop-down's choice changes (~150-300 ms at 2,000 versions, more than the diff itself);
  // a list box lays out only the rows it changes (~1 ms).
  const aSelect = h('select', { size: 5, class: 'versions', 'aria-label': t('replay.compareFrom'), 'data-testid': 'compare-from', onchange: (e) => set({ a: Number(e.target.value) }) }, versions.map(versionOption));
  const view = h('div', { class: 'code-box', 'data-testid': 'replay-view' });
  const step = (i) => set({ i: Math.max(0, Math.min(versions.length - 1, i)), a: null });
  const btn = (key, fn, testid) => h('button', { type: 'button', onclick: fn, 'data-testid': testid }, t(key));

  slider.addEventListener('input', () => step(Number(slider.value)));
  el.replaceChildren(
    h('div', { class: 'title-row' }, h('h1', {}, `${t('replay.title')} · ${sid}`), fileSelect),
    h('div', { class: 'replay-bar card' },
      h('div', { class: 'stepper' },
        btn('replay.first', () => step(0), 'first'), btn('replay.prev', () => step(state.i - 1), 'prev'),
        slider,
        btn('replay.next', () => step(state.i + 1), 'next'), btn('replay.last', () => step(versions.length - 1), 'last')),
      h('div', { class: 'stepper' }, label, meta),
      h('div', { class: 'stepper' },
        h('span', { class: 'segmented' }, modeButtons),
        h('label', { class: 'inline compare' }, t('replay.compareFrom'), ' ', aSelect, ' → B'))),
    view);

  el.tabIndex = -1;
  el.addEventListener('keydown', (e) => {
    if (e.target instanceof HTMLInputElement && e.target !== slider) return;
    if (e.target instanceof HTMLSelectElement) return;
    if (e.key === 'ArrowLeft' && e.target !== slider) step(state.i - 1);
    if (e.key === 'ArrowRight' && e.target !== slider) step(state.i + 1);
  });

  let seq = 0;
  async function show() {
    const my = ++seq;
    const v = versions[state.i];
    const aIndex = state.a !== null ? ids.indexOf(state.a) : Math.max(0, state.i - 1);
    slider.value = state.i;
    label.textContent = t('replay.version', { i: state.i + 1, n: versions.length });
    meta.textContent = ` · ${kst(v.ts)} · ${bytes(v.size)}`;
    if (aSelect.value !== String(ids[aIndex])) aSelect.value = String(ids[aIndex]);
    if (aSelect.disabled !== (state.mode === 'code')) aSelect.disabled = state.mode === 'code';
    modeButtons.forEach((b) => b.classList.toggle('active', b.dataset.mode === state.mode));
    history.replaceState(null, '', withQuery(here, { path, v: v.snapshot_id, a: state.a, mode: state.mode === 'code' ? '' : state.mode }));
    let node;
    try {
      if (state.mode === 'code') {
        node = v.has_content ? codeView(await snapshotText(v.snapshot_id)) : h('p', { class: 'empty' }, t('replay.noContent'));
      } else {
        const text = await diffText(ids[aIndex], v.snapshot_id);
        const rows = parseUnified(text);
        node = rows.length ? (state.mode === 'split' ? splitView(rows) : unifiedView(rows)) : h('p', { class: 'empty', 'data-testid': 'diff-identical' }, t('replay.identical'));
      }
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      node = h('p', { class: 'empty' }, err.status === 422 || err.status === 404 ? t('replay.noContent') : err.message);
    }
    if (my === seq && ctx.alive()) {
      view.replaceChildren(node);
      view.dataset.shown = state.mode === 'code' ? `${state.i}` : `${aIndex}>${state.i}`; // for tests and bench
    }
  }
  function set(patch) {
    Object.assign(state, patch);
    show();
  }
  await show();
}
