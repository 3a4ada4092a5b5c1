import { getJSON, paths } from '../api.js';
import { h, route } from '../dom.js';
import { t, } from '../i18n.js';
import { num } from '../format.js';

export async function render({ el, setCrumbs }) {
  setCrumbs([[t('nav.classes')]]);
  el.append(h('p', { class: 'muted' }, t('app.loading')));
  const list = await getJSON(paths.classes());
  el.replaceChildren(h('h1', {}, t('classes.title')));
  if (!list.length) {
    el.append(h('p', { class: 'empty' }, t('classes.empty')));
    return;
  }
  el.append(h('div', { class: 'cards' }, list.map((c) =>
    h('a', { class: 'card class-card', href: route('c', c.class_div), 'data-testid': 'class-card' },
      h('div', { class: 'card-title' }, c.class_div),
      h('div', { class: 'muted' }, `${t('col.subject')} ${c.subject} · ${t('col.division')} ${c.division}`),
      h('div', { class: 'card-stats' },
        h('span', {}, h('b', {}, num(c.students)), ' ', t('col.students')),
        h('span', {}, h('b', {}, num(c.assignments)), ' ', t('col.assignments')))),
  )));
}
