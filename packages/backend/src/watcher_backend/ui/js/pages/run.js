// One build: the command, its diagnostics, and the exact code it compiled (the snapshots
// holding the bytes it read) with the diagnostic lines highlighted.
import { getJSON, paths, snapshotText } from '../api.js';
import { append, h, route, withQuery } from '../dom.js';
import { t } from '../i18n.js';
import { kst, outcome } from '../format.js';
import { codeView } from '../diff.js';

const base = (p) => p.split('/').pop();

export async function render({ el, params, setCrumbs, alive }) {
  el.append(h('p', { class: 'muted' }, t('app.loading')));
  const run = await getJSON(paths.run(params.runId));
  const { class_div: c, assignment: hw, student_id: sid } = run;
  const crumbs = [[t('nav.classes'), '#/'], [c, route('c', c)]];
  if (hw) crumbs.push([hw, route('c', c, hw)], [sid, route('c', c, hw, sid)]);
  crumbs.push([t('run.title', { id: run.run_id })]);
  setCrumbs(crumbs);

  const ok = run.exit_code === 0 && run.signal === null;
  const sources = await Promise.all(run.sources.map(async (s) => ({
    ...s, text: s.snapshot_id !== null ? await snapshotText(s.snapshot_id).catch(() => null) : null,
  })));
  if (!alive()) return;

  const diagsFor = (path) => run.diagnostics.filter((d) => d.file && (d.file === path || base(d.file) === base(path)));
  const jump = (d) => {
    const target = sources.find((s) => s.text !== null && diagsFor(s.path).includes(d));
    if (!target || !d.line) return;
    const row = document.querySelector(`[data-source="${CSS.escape(target.path)}"] [data-line="${d.line}"]`);
    row?.scrollIntoView({ block: 'center' });
    row?.classList.add('flash');
    setTimeout(() => row?.classList.remove('flash'), 1200);
  };

  el.replaceChildren();
  append(el, [
    h('h1', {}, t('run.title', { id: run.run_id })),
    h('dl', { class: 'facts card' },
      h('dt', {}, t('run.student')), h('dd', {}, `${sid} · ${hw ?? '—'}`),
      h('dt', {}, t('run.command')), h('dd', {}, h('code', { class: 'argv' }, run.argv.join(' '))),
      h('dt', {}, t('run.result')), h('dd', {}, h('span', { class: `result ${ok ? 'ok' : 'fail'}`, 'data-testid': 'run-result' }, ok ? t('tl.ok') : `${t('tl.failed')} (${outcome(run)})`)),
      h('dt', {}, t('run.start')), h('dd', {}, kst(run.start)),
      h('dt', {}, t('run.duration')), h('dd', {}, run.duration_ms === null ? '—' : `${Math.round(run.duration_ms)} ms`)),
    h('section', {},
      h('h2', {}, t('run.diagnostics')),
      run.diagnostics.length
        ? h('ul', { class: 'diagnostics', 'data-testid': 'diagnostics' }, run.diagnostics.map((d) => h('li', { class: `diag sev-${d.severity}` },
          h('button', { type: 'button', class: 'linkish', onclick: () => jump(d) },
            `${d.file || '?'}:${d.line ?? '?'}:${d.column ?? '?'}`),
          ' ', h('span', { class: `sev sev-${d.severity}` }, d.severity), ' ', h('span', { class: 'msg' }, d.message))))
        : h('p', { class: 'empty' }, t('run.noDiagnostics'))),
    run.stderr_excerpt ? h('section', {}, h('h2', {}, t('run.stderr')), h('pre', { class: 'stderr' }, run.stderr_excerpt)) : null,
    h('section', {},
      h('h2', {}, t('run.sources')),
      sources.some((s) => s.text !== null)
        ? sources.map((s) => {
          const marks = new Map();
          for (const d of diagsFor(s.path)) {
            if (d.line) marks.set(d.line, [...(marks.get(d.line) || []), d]);
          }
          return h('div', { class: 'source', 'data-source': s.path, 'data-testid': 'source' },
            h('div', { class: 'source-head' }, h('strong', {}, s.path), ' ',
              s.snapshot_id !== null && hw ? h('a', { href: withQuery(route('c', c, hw, sid, 'replay'), { path: s.path, v: s.snapshot_id }) }, t('run.openReplay')) : null),
            s.text !== null ? h('div', { class: 'code-box' }, codeView(s.text, marks)) : h('p', { class: 'empty' }, t('replay.noContent')));
        })
        : h('p', { class: 'empty' }, t('run.noSource'))),
  ]);
}
