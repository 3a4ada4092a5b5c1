// Unified diff text (from /api/v1/diff) → rows, rendered unified or side by side.
import { h } from './dom.js';

/** [{type: 'hunk'|'ctx'|'del'|'add'|'note', text, old, new}] */
export function parseUnified(text) {
  const rows = [];
  let oldNo = 0, newNo = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith('--- ') || line.startsWith('+++ ')) continue;
    const m = line.match(/^@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@/);
    if (m) {
      oldNo = Number(m[1]);
      newNo = Number(m[2]);
      rows.push({ type: 'hunk', text: line });
    } else if (line.startsWith('-')) rows.push({ type: 'del', text: line.slice(1), old: oldNo++ });
    else if (line.startsWith('+')) rows.push({ type: 'add', text: line.slice(1), new: newNo++ });
    else if (line.startsWith(' ')) rows.push({ type: 'ctx', text: line.slice(1), old: oldNo++, new: newNo++ });
    else if (line.startsWith('\\')) rows.push({ type: 'note', text: line });
  }
  return rows;
}

const cell = (n) => h('td', { class: 'ln' }, n === undefined ? '' : String(n));
const sign = { del: '-', add: '+', ctx: ' ' };

export function unifiedView(rows) {
  return h('table', { class: 'code diff unified', 'data-testid': 'diff' }, h('tbody', {}, rows.map((r) => {
    if (r.type === 'hunk' || r.type === 'note') return h('tr', { class: r.type }, h('td', { colspan: 3 }, r.text));
    return h('tr', { class: r.type }, cell(r.old), cell(r.new), h('td', { class: 'src' }, sign[r.type] + r.text));
  })));
}

export function splitView(rows) {
  const out = [];
  let dels = [], adds = [];
  const flush = () => {
    for (let i = 0; i < Math.max(dels.length, adds.length); i++) {
      const d = dels[i], a = adds[i];
      out.push(h('tr', {},
        cell(d?.old), h('td', { class: `src ${d ? 'del' : 'blank'}` }, d ? d.text : ''),
        cell(a?.new), h('td', { class: `src ${a ? 'add' : 'blank'}` }, a ? a.text : '')));
    }
    dels = [];
    adds = [];
  };
  for (const r of rows) {
    if (r.type === 'del') dels.push(r);
    else if (r.type === 'add') adds.push(r);
    else {
      flush();
      if (r.type === 'ctx') out.push(h('tr', { class: 'ctx' }, cell(r.old), h('td', { class: 'src' }, r.text), cell(r.new), h('td', { class: 'src' }, r.text)));
      else out.push(h('tr', { class: r.type }, h('td', { colspan: 4 }, r.text)));
    }
  }
  flush();
  return h('table', { class: 'code diff split', 'data-testid': 'diff' }, h('tbody', {}, out));
}

/** Source with line numbers; `marks` maps line number → [{severity, message}]. */
export function codeView(text, marks = new Map()) {
  const lines = text.split('\n');
  if (lines.length > 1 && lines[lines.length - 1] === '') lines.pop();
  return h('table', { class: 'code', 'data-testid': 'code' }, h('tbody', {}, lines.map((line, i) => {
    const n = i + 1;
    const notes = marks.get(n);
    const worst = notes && (notes.some((x) => x.severity === 'error' || x.severity === 'fatal') ? 'error' : 'warning');
    return h('tr', { id: `L${n}`, class: notes ? `marked ${worst}` : null, title: notes ? notes.map((x) => x.message).join('\n') : null, 'data-line': n },
      cell(n), h('td', { class: 'src' }, line));
  })));
}
