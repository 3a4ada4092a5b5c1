// Weekday × hour grid (Korea time). Shades follow the square root of the count relative to
// the busiest hour, so one very busy student does not wash out everyone else.
import { h } from './dom.js';
import { t } from './i18n.js';

export function heatmap(data) {
  const days = t('heat.days').split(',');
  const max = Math.max(1, ...data.total.flat());
  const grid = h('div', { class: 'heatmap', role: 'table', 'data-testid': 'heatmap' });
  grid.append(h('div', { class: 'hm-corner' }));
  for (let hr = 0; hr < 24; hr++) grid.append(h('div', { class: 'hm-hour' }, hr % 3 === 0 ? String(hr) : ''));
  data.total.forEach((row, wd) => {
    grid.append(h('div', { class: 'hm-day' }, days[wd]));
    row.forEach((n, hr) => {
      const level = n === 0 ? 0 : Math.min(5, Math.ceil(Math.sqrt(n / max) * 5));
      grid.append(h('div', {
        class: `hm-cell l${level}`,
        title: `${days[wd]} ${String(hr).padStart(2, '0')}:00 — ${t('heat.events', { n })}`,
      }));
    });
  });
  const legend = h('div', { class: 'hm-legend' }, '0', [0, 1, 2, 3, 4, 5].map((l) => h('div', { class: `hm-cell l${l}` })), t('heat.events', { n: max }));
  return h('div', {}, grid, legend);
}
