// The sign-in dialog: an API key, or a username and password (POST /token). It opens over the current screen
// when a request gets 401, and the request goes on once the user has signed in.

import { credentials, signInWith } from './api.js';
import { h, fill } from './dom.js';

let waiting = null;

export function askSignIn(reason) {
  if (waiting) return waiting.promise;
  let resolve;
  const promise = new Promise((r) => { resolve = r; });
  waiting = { promise, resolve };
  show(reason);
  return promise;
}

function signedIn() {
  document.getElementById('signin').close();
  const done = waiting;
  waiting = null;
  done?.resolve();
}

function show(reason) {
  const dialog = document.getElementById('signin');
  const message = h('p', { class: 'error', role: 'alert' });
  const remember = h('input', { type: 'checkbox', id: 'signin-remember' });
  fill(dialog,
    h('h1', { id: 'signin-title' }, 'Sign in'),
    h('p', { class: 'hint' }, reason),
    keyForm(message, remember),
    h('p', { class: 'hint' }, 'or, with an account:'),
    passwordForm(message, remember),
    h('div', { class: 'actions' }, remember, h('label', { for: 'signin-remember', class: 'inline' }, 'Remember on this device')),
    message);
  dialog.addEventListener('cancel', (e) => e.preventDefault());
  if (!dialog.open) dialog.showModal();
}

function keyForm(message, remember) {
  const key = h('input', { id: 'signin-key', type: 'password', autocomplete: 'off', placeholder: 'fk_…' });
  return h('form', {
    onsubmit: async (e) => {
      e.preventDefault();
      credentials.set({ kind: 'key', key: key.value.trim() }, remember.checked);
      try {
        await probe();
        signedIn();
      } catch (err) {
        credentials.clear();
        message.textContent = err.message;
      }
    },
  }, h('label', { for: 'signin-key' }, 'API key'), key,
  h('div', { class: 'actions' }, h('button', { class: 'primary', type: 'submit' }, 'Use key')));
}

function passwordForm(message, remember) {
  const user = h('input', { id: 'signin-user', autocomplete: 'username' });
  const password = h('input', { id: 'signin-password', type: 'password', autocomplete: 'current-password' });
  return h('form', {
    onsubmit: async (e) => {
      e.preventDefault();
      try {
        await signInWith({ grant_type: 'password', username: user.value, password: password.value },
          user.value, remember.checked);
        signedIn();
      } catch (err) {
        message.textContent = err.message;
      }
    },
  }, h('label', { for: 'signin-user' }, 'Username'), user,
  h('label', { for: 'signin-password' }, 'Password'), password,
  h('div', { class: 'actions' }, h('button', { class: 'primary', type: 'submit' }, 'Sign in')));
}

/** A cheap authenticated request that tells a wrong key at once, without the dialog reopening itself. */
async function probe() {
  const response = await fetch('/v1/agents', { headers: { authorization: `Bearer ${credentials.get().key}` } });
  if (response.status === 401) {
    const problem = await response.json().catch(() => ({}));
    throw new Error(problem.message || 'The key was refused.');
  }
}
