// Assignment page: the student table (sorted, filtered and paginated by the server),
// the most frequent compile errors, stuck students and the export downloads.
import { getJSON, paths, url } from '../api.js';
import { h, route, withQuery } from '../dom.js';
import { t } from '../i18n.js';
import { duration, fixed, kst, num, pct } from '../format.js';
import { heatmap } from '../heatmap.js';

const PAGE = 50;
const FLAGS = ['paste_like', 'first_save_near_final', 'low_activity', 'stuck'];
const COLUMNS = [
  ['student_id', 'col.student'],
  ['started', 'col.started', false],
  ['last_activity', 'col.lastActivity'],
  ['saves', 'col.saves'],
  ['builds', 'col.builds'],
  ['build_success_rate', 'col.successRate'],
  ['runs', 'col.runs'],
  ['crashes', 'col.crashes'],
  ['time_on_task_s', 'col.timeOnTask'],
  ['error_quotient', 'col.eq'],
  ['repeated_error_density', 'col.red'],
  ['flags', 'col.flags'],
];

export function flagChips(flags) {
  return h('span', { class: 'chips' }, flags.map((f) => h('span', { class: `chip flag-${f}`, title: t(`flag.${f}`) }, t(`flag.${f}`))));
}

let refocusSearch = false; // typing re-renders the page: keep the caret in the box

export async function render(ctx) {
  const { el, params, query, setCrumbs, navigate } = ctx;
  const { classDiv: c, hw } = params;
  setCrumbs([[t('nav.classes'), '#/'], [c, route('c', c)], [hw]]);
  const state = {
    sort: query.get('sort') || 'student_id',
    order: query.get('order') === 'desc' ? 'desc' : 'asc',
    search: query.get('q') || '',
    flag: FLAGS.includes(query.get('flag')) ? query.get('flag') : '',
    started: ['true', 'false'].includes(query.get('started')) ? query.get('started') : '',
    page: Math.max(0, parseInt(query.get('page') || '0', 10) || 0),
  };
  const here = route('c', c, hw);
  const go = (patch) => {
    const s = { ...state, ...patch };
    navigate(withQuery(here, { sort: s.sort === 'student_id' ? '' : s.sort, order: s.order === 'asc' ? '' : s.order, q: s.search, flag: s.flag, started: s.started, page: s.page || '' }), { replace: true });
  };

  const tableBox = h('div', { class: 'table-box' }, h('p', { class: 'muted' }, t('app.loading')));
  const errorsBox = h('div', { class: 'two-col' }, h('p', { class: 'muted' }, t('app.loading')));
  const heatBox = h('section', {}, h('h2', {}, t('class.heatmap')));
  const statsLine = h('p', { class: 'muted', 'data-testid': 'class-stats' });

  const search = h('input', { type: 'search', value: state.search, placeholder: t('asg.search'), 'aria-label': t('asg.search'), 'data-testid': 'search' });
  let timer = null;
  search.addEventListener('input', () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      refocusSearch = true;
      go({ search: search.value.trim(), page: 0 });
    }, 300);
  });
  const select = (value, options, onchange, label) => {
    const s = h('select', { 'aria-label': label, onchange: (e) => onchange(e.target.value) },
      options.map(([v, text]) => h('option', { value: v, selected: v === value }, text)));
    return h('label', { class: 'inline' }, label, ' ', s);
  };
  const dl = (href, label, testid) => h('a', { class: 'button', href, download: '', 'data-testid': testid }, label);

  el.append(
    h('div', { class: 'title-row' },
      h('h1', {}, `${c} · ${hw}`),
      h('div', { class: 'actions' },
        h('span', { class: 'muted' }, t('asg.downloads')),
        dl(url(paths.csv(), { class_div: c, assignment: hw }), t('asg.csv'), 'download-csv'),
        dl(url(paths.progsnap2(), { class_div: c, assignment: hw }), t('asg.progsnap2'), 'download-progsnap2'))),
    statsLine,
    h('section', {},
      h('h2', {}, t('asg.students')),
      h('div', { class: 'filters' },
        search,
        select(state.flag, [['', t('asg.anyFlag')], ...FLAGS.map((f) => [f, t(`flag.${f}`)])], (v) => go({ flag: v, page: 0 }), t('asg.flag')),
        select(state.started, [['', t('asg.all')], ['true', t('asg.startedYes')], ['false', t('asg.startedNo')]], (v) => go({ started: v, page: 0 }), t('asg.started'))),
      tableBox),
    h('section', {}, errorsBox),
    heatBox,
  );

  if (refocusSearch) {
    refocusSearch = false;
    search.focus();
    search.setSelectionRange(search.value.length, search.value.length);
  }
  // The table first: the error summary and heatmap are asked for after it, so on a busy
  // server they do not compete with the request the instructor is waiting for.
  const summary = await getJSON(url(paths.summary(c, hw), {
    sort: state.sort, order: state.order, search: state.search, flag: state.flag,
    started: state.started, offset: state.page * PAGE, limit: PAGE,
  }));
  if (!ctx.alive()) return;
  const errorsP = getJSON(url(paths.errors(c, hw), { limit: 10 }));
  const heatP = getJSON(url(paths.heatmap(c), { assignment: hw }));
  statsLine.textContent = t('asg.stats', { started: summary.stats.started, students: summary.stats.students, median: duration(summary.stats.median_time_on_task_s) });
  tableBox.replaceChildren(studentTable(summary, state, go, c, hw));
  renderErrors(errorsBox, await errorsP, c, hw);
  heatBox.append(heatmap(await heatP));
}

function studentTable(summary, state, go, c, hw) {
  const head = h('tr', {}, COLUMNS.map(([key, label, sortable = true]) => {
    if (!sortable) return h('th', {}, t(label));
    const active = state.sort === key;
    const next = active && state.order === 'asc' ? 'desc' : 'asc';
    return h('th', { 'aria-sort': active ? (state.order === 'asc' ? 'ascending' : 'descending') : null },
      h('button', { type: 'button', class: `sort${active ? ' active' : ''}`, 'data-sort': key, onclick: () => go({ sort: key, order: active ? next : key === 'student_id' ? 'asc' : 'desc', page: 0 }) },
        t(label), active ? (state.order === 'asc' ? ' ▲' : ' ▼') : ''));
  }));
  const rows = summary.items.map((s) => h('tr', { class: s.started ? '' : 'not-started', 'data-testid': 'student-row' },
    h('td', {}, h('a', { href: route('c', c, hw, s.student_id), 'data-testid': 'student-link' }, s.student_id)),
    h('td', {}, s.started ? t('yes') : t('no')),
    h('td', {}, kst(s.last_activity, 'short')),
    h('td', { class: 'n' }, num(s.saves)),
    h('td', { class: 'n' }, num(s.builds)),
    h('td', { class: 'n' }, pct(s.build_success_rate)),
    h('td', { class: 'n' }, num(s.runs)),
    h('td', { class: `n${s.crashes ? ' warn' : ''}` }, num(s.crashes)),
    h('td', { class: 'n' }, duration(s.time_on_task_s)),
    h('td', { class: 'n' }, fixed(s.error_quotient)),
    h('td', { class: 'n' }, fixed(s.repeated_error_density)),
    h('td', {}, flagChips(s.flags))));
  const from = summary.total ? summary.offset + 1 : 0;
  const to = summary.offset + summary.items.length;
  const pager = h('div', { class: 'pager' },
    h('span', { class: 'muted', 'data-testid': 'pager-status' }, t('asg.page', { from, to, total: summary.total })),
    h('button', { type: 'button', disabled: state.page === 0, onclick: () => go({ page: state.page - 1 }) }, t('asg.prev')),
    h('button', { type: 'button', disabled: to >= summary.total, onclick: () => go({ page: state.page + 1 }) }, t('asg.next')));
  return h('div', {}, h('div', { class: 'scroll-x' }, h('table', { class: 'grid students', 'data-testid': 'student-table' }, h('thead', {}, head), h('tbody', {}, rows))), pager);
}

function renderErrors(box, data, c, hw) {
  const top = data.top.length
    ? h('table', { class: 'grid', 'data-testid': 'top-errors' },
      h('thead', {}, h('tr', {}, [t('col.template'), t('col.occurrences'), t('col.failedBuilds'), t('col.students')].map((x) => h('th', {}, x)))),
      h('tbody', {}, data.top.map((e) => h('tr', {},
        h('td', {}, h('code', { title: e.example }, e.template)),
        h('td', { class: 'n' }, num(e.occurrences)),
        h('td', { class: 'n' }, num(e.builds)),
        h('td', { class: 'n' }, num(e.students))))))
    : h('p', { class: 'empty' }, t('asg.noErrors'));
  const stuck = data.stuck.length
    ? h('table', { class: 'grid', 'data-testid': 'stuck' },
      h('thead', {}, h('tr', {}, [t('col.student'), t('col.template'), t('col.streak'), t('col.lastBuild')].map((x) => h('th', {}, x)))),
      h('tbody', {}, data.stuck.map((s) => h('tr', {},
        h('td', {}, h('a', { href: route('c', c, hw, s.student_id) }, s.student_id)),
        h('td', {}, h('code', {}, s.template ?? '—')),
        h('td', { class: 'n' }, num(s.streak)),
        h('td', {}, kst(s.last_build, 'short'))))))
    : h('p', { class: 'empty' }, t('asg.noStuck'));
  box.replaceChildren(
    h('div', {}, h('h2', {}, t('asg.errors')), top),
    h('div', {}, h('h2', {}, t('asg.stuck')), stuck));
}
