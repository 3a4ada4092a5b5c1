import { signIn } from '../api.js';
import { h } from '../dom.js';
import { t } from '../i18n.js';

export async function render({ el, navigate, notice, next }) {
  const msg = h('p', { class: 'form-error', role: 'alert', 'data-testid': 'login-error' }, notice || '');
  msg.hidden = !notice;
  const input = h('input', {
    type: 'password', id: 'token', name: 'token', autocomplete: 'current-password',
    required: true, spellcheck: 'false', 'data-testid': 'token',
  });
  const button = h('button', { type: 'submit', class: 'primary', 'data-testid': 'login-submit' }, t('auth.submit'));
  const form = h('form', { class: 'login card', onsubmit: async (e) => {
    e.preventDefault();
    button.disabled = true;
    msg.hidden = true;
    try {
      const status = await signIn(input.value.trim());
      if (status === 204) {
        input.value = '';
        navigate(next, { replace: true });
        return;
      }
      msg.textContent = status === 401 ? t('auth.invalid') : status === 403 ? t('auth.forbidden') : t('auth.failed', { status });
      msg.hidden = false;
      input.select();
    } finally {
      button.disabled = false;
    }
  } },
  h('h1', {}, t('auth.title')),
  h('p', { class: 'muted' }, t('auth.lead')),
  h('label', { for: 'token' }, t('auth.token')),
  input, msg, button);
  el.append(form);
  input.focus();
}
