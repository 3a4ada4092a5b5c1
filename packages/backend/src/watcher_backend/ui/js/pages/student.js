// One student in one assignment: figures, evidence (never verdicts), files and the
// timeline of saves, builds, runs and notebook cells on one time axis (Korea time).
import { getJSON, paths, url } from '../api.js';
import { h, route, svg, withQuery } from '../dom.js';
import { t } from '../i18n.js';
import { CRASH_SIGNALS, bytes, duration, fixed, kst, num, outcome, pct } from '../format.js';
import { flagChips } from './assignment.js';

const PAGE = 200;
const KINDS = ['snapshot', 'build', 'run', 'cell', 'delete', 'rename'];
const LANES = { snapshot: 0, delete: 0, rename: 0, build: 1, run: 2, cell: 3 };
const LANE_KEYS = ['kind.snapshot', 'kind.build', 'kind.run', 'kind.cell'];

export async function render(ctx) {
  const { el, params, query, setCrumbs } = ctx;
  const { classDiv: c, hw, sid } = params;
  setCrumbs([[t('nav.classes'), '#/'], [c, route('c', c)], [hw, route('c', c, hw)], [sid]]);
  const base = paths.student(c, hw, sid);
  const kinds = (query.get('kinds') || '').split(',').filter((k) => KINDS.includes(k));
  const wanted = kinds.length ? kinds : KINDS;

  // Each part is drawn when its own request answers: the timeline does not wait for the
  // class-wide analytics (the slowest call).
  const loading = () => h('p', { class: 'muted' }, t('app.loading'));
  const figuresBox = h('section', { class: 'figures', 'data-testid': 'figures' }, loading());
  const filesBox = h('section', {}, h('h2', {}, t('student.files')), loading());
  const evidenceBox = h('section', { class: 'evidence' }, h('h2', {}, t('student.evidence')), loading());
  const replay = (path, v, mode) => withQuery(route('c', c, hw, sid, 'replay'), { path, v, mode });
  const timeline = new Timeline(c, hw, sid, replay);
  el.append(
    h('h1', {}, t('student.title', { sid, hw })),
    figuresBox,
    h('div', { class: 'two-col' }, filesBox, evidenceBox),
    h('section', {},
      h('h2', {}, t('student.timeline')),
      kindFilter(wanted, (next) => ctx.navigate(withQuery(route('c', c, hw, sid), { kinds: next.length === KINDS.length ? '' : next.join(',') }), { replace: true })),
      timeline.el),
  );
  timeline.onMore = async (cursor) => {
    timeline.add(await getJSON(url(`${base}/timeline`, { limit: PAGE, cursor, kinds: kinds.join(',') })));
  };
  // The timeline is asked for first and alone; the file list and the class-wide analytics
  // (the slowest call, pure server CPU) once it answered: they would otherwise share the
  // server's core with it and hold the page's main content back.
  const first = getJSON(url(`${base}/timeline`, { limit: PAGE, kinds: kinds.join(',') }));
  const parts = [
    first.then((page) => ctx.alive() && timeline.add(page)),
    first.catch(() => null).then(() => ctx.alive() ? getJSON(`${base}/files`) : null).then((files) => files && ctx.alive() && filesBox.replaceChildren(
      h('h2', {}, t('student.files')),
      h('ul', { class: 'files', 'data-testid': 'files' }, files.map((fi) => h('li', {},
        h('a', { href: replay(fi.path), 'data-testid': 'file-link' }, fi.path),
        ' ', h('span', { class: 'muted' }, t('student.versions', { n: fi.versions }), ' · ', bytes(fi.last_size)),
        fi.deleted ? h('span', { class: 'chip' }, t('student.deleted')) : null))))),
    first.catch(() => null).then(() => ctx.alive() ? getJSON(`${base}/analytics`) : null).then((analytics) => {
      if (!analytics || !ctx.alive()) return;
      const f = analytics.figures;
      figuresBox.replaceChildren(
        figure(t('col.saves'), num(f.saves)),
        figure(t('col.builds'), `${num(f.builds)} (${pct(f.build_success_rate)})`),
        figure(t('col.runs'), num(f.runs)),
        figure(t('col.crashes'), num(f.crashes)),
        figure(t('kind.cell'), num(f.cells)),
        figure(t('col.timeOnTask'), duration(f.time_on_task_s)),
        figure(t('col.eq'), fixed(f.error_quotient)),
        figure(t('col.red'), fixed(f.repeated_error_density)),
        figure(t('col.lastActivity'), kst(f.last_activity, 'short')));
      evidenceBox.replaceWith(evidence(analytics, replay));
    }),
  ];
  // the router shows the first failure (e.g. an expired session)
  await Promise.all(parts);
}

function figure(label, value) {
  return h('div', { class: 'figure' }, h('div', { class: 'figure-value' }, value), h('div', { class: 'figure-label' }, label));
}

function kindFilter(wanted, onChange) {
  const boxes = KINDS.map((k) => {
    const box = h('input', { type: 'checkbox', value: k, checked: wanted.includes(k) });
    box.addEventListener('change', () => {
      const next = boxes.filter((b) => b.checked).map((b) => b.value);
      if (next.length) onChange(next);
      else box.checked = true;
    });
    return box;
  });
  return h('div', { class: 'filters', 'aria-label': t('tl.filter') }, h('span', { class: 'muted' }, t('tl.filter')),
    boxes.map((b) => h('label', { class: `inline kind-${b.value}` }, b, ' ', t(`kind.${b.value}`))));
}

function evidence(a, replay) {
  const f = a.figures;
  const parts = [];
  if (a.paste_like.length) {
    parts.push(h('h3', {}, t('student.pastes')), h('ul', { class: 'evidence-list', 'data-testid': 'evidence-pastes' },
      a.paste_like.map((p) => h('li', {},
        // the diff with the save before it is the evidence itself
        h('a', { href: replay(p.path, p.snapshot_id, 'unified') }, kst(p.ts, 'short')), ' ',
        t('student.pasteRow', { path: p.path, bytes: num(p.added_bytes), seconds: fixed(p.seconds, 0) })))));
  }
  if (a.files.length) {
    parts.push(h('h3', {}, t('student.sizes')), h('ul', { class: 'evidence-list' }, a.files.map((x) => h('li', { class: x.first_save_near_final ? 'hl' : '' },
      x.path, ': ', bytes(x.first_size), ' → ', bytes(x.final_size)))));
  }
  if (a.repeated_errors.length) {
    parts.push(h('h3', {}, t('student.repeated')), h('ul', { class: 'evidence-list' }, a.repeated_errors.map((r) => h('li', {},
      h('code', {}, r.template ?? '—'), ` × ${r.length}`))));
  }
  if (a.top_errors.length) {
    parts.push(h('h3', {}, t('student.topErrors')), h('ul', { class: 'evidence-list' }, a.top_errors.slice(0, 5).map(([tpl, n]) => h('li', {},
      h('code', {}, tpl), ` × ${n}`))));
  }
  return h('section', { class: 'evidence', 'data-testid': 'evidence' },
    h('h2', {}, t('student.evidence')),
    f.flags.length ? flagChips(f.flags) : null,
    h('p', { class: 'note' }, t('student.evidenceNote')),
    parts.length ? parts : h('p', { class: 'empty' }, t('student.noEvidence')));
}

/** The time axis (one lane per kind) above the event list; pages append. */
class Timeline {
  constructor(c, hw, sid, replay) {
    this.items = [];
    this.replay = replay;
    this.axis = h('div', { class: 'axis' });
    this.body = h('tbody', {});
    this.status = h('span', { class: 'muted', 'data-testid': 'timeline-status' });
    this.more = h('button', { type: 'button', hidden: true, 'data-testid': 'timeline-more' }, t('tl.more'));
    this.more.addEventListener('click', async () => {
      this.more.disabled = true;
      try {
        await this.onMore(this.cursor);
      } finally {
        this.more.disabled = false;
      }
    });
    this.el = h('div', { class: 'timeline' }, this.axis,
      h('div', { class: 'scroll-x' }, h('table', { class: 'grid events', 'data-testid': 'timeline' }, this.body)),
      h('div', { class: 'pager' }, this.status, this.more));
  }

  add(page) {
    const start = this.items.length;
    this.items.push(...page.items);
    this.cursor = page.next_cursor;
    const frag = document.createDocumentFragment();
    page.items.forEach((it, i) => frag.append(this.row(it, start + i)));
    this.body.append(frag);
    this.more.hidden = !this.cursor;
    this.status.textContent = `${t('tl.shown', { n: num(this.items.length) })}${this.cursor ? '' : ` · ${t('tl.end')}`}`;
    this.drawAxis();
  }

  row(it, index) {
    const tr = h('tr', { id: `ev-${index}`, class: `ev ev-${it.kind}${bad(it) ? ' bad' : ''}`, 'data-kind': it.kind });
    tr.append(h('td', { class: 'time' }, kst(it.ts)), h('td', {}, h('span', { class: `badge kind-${it.kind}` }, t(`kind.${it.kind}`))), h('td', {}, describe(it, this.replay)));
    return tr;
  }

  drawAxis() {
    const items = this.items;
    if (!items.length) {
      this.axis.replaceChildren();
      return;
    }
    const t0 = Date.parse(items[0].ts);
    const t1 = Math.max(t0 + 1000, Date.parse(items[items.length - 1].ts));
    const W = 1000, lane = 18, top = 4, left = 90;
    const height = top + lane * 4 + 18;
    const x = (ts) => left + ((Date.parse(ts) - t0) / (t1 - t0)) * (W - left - 10);
    const s = svg('svg', { viewBox: `0 0 ${W} ${height}`, class: 'axis-svg', role: 'img', 'aria-label': t('student.timeline'), 'data-testid': 'timeline-axis' });
    LANE_KEYS.forEach((key, i) => {
      s.append(svg('text', { x: 4, y: top + lane * i + 13, class: 'lane-label' }, t(key)));
      s.append(svg('line', { x1: left, x2: W - 10, y1: top + lane * i + 9, y2: top + lane * i + 9, class: 'lane-line' }));
    });
    items.forEach((it, i) => {
      const cx = x(it.ts);
      const cy = top + lane * LANES[it.kind] + 9;
      const mark = svg('rect', { x: cx - 2, y: cy - 6, width: 4, height: 12, class: `mark kind-${it.kind}${bad(it) ? ' bad' : ''}` },
        svg('title', {}, `${kst(it.ts)} ${t(`kind.${it.kind}`)}`));
      mark.addEventListener('click', () => {
        const row = document.getElementById(`ev-${i}`);
        row?.scrollIntoView({ block: 'center' });
        row?.classList.add('flash');
        setTimeout(() => row?.classList.remove('flash'), 1200);
      });
      s.append(mark);
    });
    s.append(svg('text', { x: left, y: height - 3, class: 'axis-label' }, kst(items[0].ts, 'short')));
    s.append(svg('text', { x: W - 10, y: height - 3, class: 'axis-label end' }, kst(items[items.length - 1].ts, 'short')));
    this.axis.replaceChildren(s);
  }
}

function bad(it) {
  if (it.kind === 'build') return it.exit_code !== 0 && it.exit_code !== null || it.signal !== null;
  if (it.kind === 'run') return it.signal !== null && CRASH_SIGNALS.has(it.signal);
  if (it.kind === 'cell') return it.status === 'error';
  return false;
}

function describe(it, replay) {
  const cmd = (argv) => h('code', { class: 'argv' }, (argv || []).join(' '));
  switch (it.kind) {
    case 'snapshot':
      return [h('a', { href: replay(it.path, it.snapshot_id), 'data-testid': 'snapshot-link' }, it.path), ' ', h('span', { class: 'muted' }, bytes(it.size))];
    case 'delete':
      return it.path;
    case 'rename':
      return `${it.old_path} → ${it.path}`;
    case 'build': {
      const ok = it.exit_code === 0 && it.signal === null;
      return [cmd(it.argv), ' ',
        h('span', { class: `result ${ok ? 'ok' : 'fail'}` }, ok ? t('tl.ok') : `${t('tl.failed')} (${outcome(it)})`), ' ',
        it.diagnostics_count ? h('span', { class: 'muted' }, t('tl.diag', { n: it.diagnostics_count })) : null, ' ',
        h('a', { href: route('run', String(it.run_id)), 'data-testid': 'build-link' }, t('tl.viewBuild'))];
    }
    case 'run':
      return [cmd(it.argv), ' ', h('span', { class: `result ${bad(it) ? 'fail' : it.exit_code === 0 ? 'ok' : 'warn'}` }, outcome(it))];
    case 'cell':
      return [`${it.notebook} [${it.cell_index}]`, ' ',
        h('span', { class: `result ${it.status === 'error' ? 'fail' : 'ok'}` }, it.status === 'error' ? (it.ename || 'error') : t('tl.ok'))];
    default:
      return '';
  }
}
