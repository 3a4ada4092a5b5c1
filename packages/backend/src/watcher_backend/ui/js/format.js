// Number, time and signal formatting. Times arrive in UTC and are shown in Korea time.
import { lang } from './i18n.js';

const TZ = 'Asia/Seoul';
const fmtCache = new Map();
function fmt(kind) {
  const key = `${lang()}:${kind}`;
  if (!fmtCache.has(key)) {
    const opts = { timeZone: TZ, hour12: false };
    if (kind === 'full') Object.assign(opts, { year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit' });
    if (kind === 'time') Object.assign(opts, { hour: '2-digit', minute: '2-digit', second: '2-digit' });
    if (kind === 'short') Object.assign(opts, { month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit' });
    fmtCache.set(key, new Intl.DateTimeFormat(lang() === 'ko' ? 'ko-KR' : 'en-GB', opts));
  }
  return fmtCache.get(key);
}

export const kst = (iso, kind = 'full') => (iso ? fmt(kind).format(new Date(iso)) : '—');
export const num = (n) => (n === null || n === undefined ? '—' : Number(n).toLocaleString(lang() === 'ko' ? 'ko-KR' : 'en-US'));
export const pct = (r) => (r === null || r === undefined ? '—' : `${Math.round(r * 100)}%`);
export const fixed = (x, d = 2) => (x === null || x === undefined ? '—' : Number(x).toFixed(d));
export const bytes = (n) => (n === null || n === undefined ? '—' : n < 1024 ? `${n} B` : `${(n / 1024).toFixed(1)} KiB`);

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return '—';
  const m = Math.round(seconds / 60);
  if (m < 60) return lang() === 'ko' ? `${m}분` : `${m} min`;
  const hh = Math.floor(m / 60);
  const mm = m % 60;
  return lang() === 'ko' ? `${hh}시간 ${mm}분` : `${hh} h ${mm} min`;
}

const SIGNALS = { 1: 'SIGHUP', 2: 'SIGINT', 3: 'SIGQUIT', 4: 'SIGILL', 5: 'SIGTRAP', 6: 'SIGABRT', 7: 'SIGBUS', 8: 'SIGFPE', 9: 'SIGKILL', 11: 'SIGSEGV', 13: 'SIGPIPE', 14: 'SIGALRM', 15: 'SIGTERM', 31: 'SIGSYS' };
export const CRASH_SIGNALS = new Set([4, 5, 6, 7, 8, 11, 31]);
export const signalName = (s) => SIGNALS[s] || `signal ${s}`;

/** "exit 0", "SIGSEGV", "running?" — how a process ended. */
export function outcome(item) {
  if (item.signal !== null && item.signal !== undefined) return signalName(item.signal);
  if (item.exit_code !== null && item.exit_code !== undefined) return `exit ${item.exit_code}`;
  return '?';
}
