import { getJSON, paths, url } from '../api.js';
import { h, route } from '../dom.js';
import { t } from '../i18n.js';
import { kst, num } from '../format.js';
import { heatmap } from '../heatmap.js';

export async function render({ el, params, setCrumbs }) {
  const c = params.classDiv;
  setCrumbs([[t('nav.classes'), '#/'], [c]]);
  el.append(h('p', { class: 'muted' }, t('app.loading')));
  const [asgs, heat] = await Promise.all([
    getJSON(paths.assignments(c)),
    getJSON(paths.heatmap(c)),
  ]);
  el.replaceChildren(
    h('h1', {}, c),
    h('section', {},
      h('h2', {}, t('class.assignments')),
      h('table', { class: 'grid', 'data-testid': 'assignments' },
        h('thead', {}, h('tr', {}, [
          t('col.assignment'), t('col.students'), t('col.snapshots'), t('col.builds'), t('col.runs'), t('col.first'), t('col.last'),
        ].map((x) => h('th', {}, x)))),
        h('tbody', {}, asgs.map((a) => h('tr', {},
          h('td', {}, h('a', { href: route('c', c, a.name), 'data-testid': 'assignment-link' }, a.name)),
          h('td', { class: 'n' }, num(a.students)),
          h('td', { class: 'n' }, num(a.snapshots)),
          h('td', { class: 'n' }, num(a.builds)),
          h('td', { class: 'n' }, num(a.runs)),
          h('td', {}, kst(a.first_snapshot, 'short')),
          h('td', {}, kst(a.last_snapshot, 'short'))))))),
    h('section', {},
      h('h2', {}, t('class.heatmap')),
      heatmap(heat)),
  );
}
