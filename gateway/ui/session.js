// A session: its turns as a conversation (each message and what the agent answered, with its job), a box to
// send the next message, whose answer streams in as the agent writes it, and deleting the session.

import { api, follow, send } from './api.js';
import { h, fill, statusBadge, bytes } from './dom.js';

export function render(main, [id]) {
  const controller = new AbortController();
  const facts = h('p', { class: 'hint' });
  const turns = h('ol', { class: 'turns', 'aria-live': 'polite' });
  const message = h('textarea', { id: 'turn-message', rows: 3, required: true, placeholder: 'Your message' });
  const sendButton = h('button', { class: 'primary', type: 'submit' }, 'Send');
  const problem = h('p', { class: 'error', role: 'alert' });
  const remove = h('button', { type: 'button', class: 'quiet' }, 'Delete session');
  const title = h('h1', {}, 'Session');
  const form = h('form', { class: 'panel', onsubmit: (e) => { e.preventDefault(); say(); } },
    h('label', { for: 'turn-message' }, 'Message'), message,
    h('div', { class: 'actions' }, sendButton, h('span', { class: 'hint' }, 'Ctrl+Enter or ⌘+Enter sends'), remove),
    problem);
  form.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); form.requestSubmit(); }
  });
  fill(main, title, facts, turns, form);

  const load = async () => {
    try {
      const s = await api(`/v1/sessions/${id}`);
      title.textContent = s.title || `Session with ${s.agent}`;
      const plural = (n, what) => `${n} ${what}${n === 1 ? '' : 's'}`;
      const workspace = s.workspace ? ` · workspace ${plural(s.workspace.files, 'file')}, ${bytes(s.workspace.bytes)}` : '';
      facts.textContent = `${s.agent} · ${plural(s.turn_count, 'turn')}${workspace}`;
      fill(turns, s.turns.map((t) => turnItem(t)));
      const open = s.turns.find((t) => t.status === 'queued' || t.status === 'running');
      if (open) watch(open.job_id, turns.lastElementChild);
    } catch (e) { problem.textContent = `${e.message} (${e.code})`; }
  };

  async function say() {
    problem.textContent = '';
    sendButton.disabled = true;
    try {
      const accepted = await api(`/v1/sessions/${id}/messages`, { method: 'POST', json: { message: message.value } });
      const item = turnItem({ turn: accepted.turn, job_id: accepted.job_id, message: message.value, status: accepted.status });
      turns.append(item);
      message.value = '';
      watch(accepted.job_id, item);
    } catch (e) {
      problem.textContent = `${e.message} (${e.code})`;
    } finally {
      sendButton.disabled = false;
    }
  }

  /** Streams the turn's answer into its item as the agent writes it, then shows how it ended. */
  function watch(jobId, item) {
    const answer = item.querySelector('.answer');
    let text = '';
    follow(`/v1/jobs/${jobId}/events`, {
      signal: controller.signal,
      onState: () => {},
      onEvent: ({ event, data }) => {
        if (event === 'message') text += data.delta ? data.text : `${data.text}\n`;
        else if (event === 'output' && data.stream === 'stdout') text += data.text;
        else if (event === 'end') {
          const r = data.record;
          text = r.answer ?? r.stdout ?? text;
          fill(item.querySelector('.turn-status'), statusBadge(r.status));
          if (r.error) item.append(h('p', { class: 'error' }, `${r.error.code}: ${r.error.message}`));
        } else if (event === 'status') fill(item.querySelector('.turn-status'), statusBadge('running'));
        answer.textContent = text;
      },
    }).catch((e) => { problem.textContent = `${e.message} (${e.code})`; });
  }

  remove.addEventListener('click', async () => {
    if (!confirm('Delete this session, its history and its files?')) return;
    const response = await send(`/v1/sessions/${id}`, { method: 'DELETE' });
    if (response.ok) location.hash = '#/sessions';
    else problem.textContent = `Deleting failed (HTTP ${response.status})`;
  });
  load();
  return () => controller.abort();
}

function turnItem(t) {
  return h('li', { class: 'turn' },
    h('div', { class: 'you' }, h('span', { class: 'who' }, `You · turn ${t.turn}`), h('p', { class: 'said' }, t.message)),
    h('div', { class: 'agent' },
      h('span', { class: 'who' }, 'Agent ', h('span', { class: 'turn-status' }, statusBadge(t.status)), ' ',
        h('a', { class: 'mono', href: `#/jobs/${t.job_id}` }, `job ${t.job_id.slice(-8)}`)),
      h('p', { class: 'said answer' }, t.answer || '')));
}
