// Sessions: start a conversation with an agent, and the caller's sessions, newest first, a page at a time.

import { api } from './api.js';
import { h, fill, when } from './dom.js';
import { loadAgents } from './run.js';

export function render(main) {
  const agent = h('select', { id: 'session-agent', required: true });
  const about = h('p', { class: 'hint' });
  const title = h('input', { id: 'session-title', placeholder: 'Optional' });
  const problem = h('p', { class: 'error', role: 'alert' });
  const start = h('button', { class: 'primary', type: 'submit' }, 'Start');
  const form = h('form', { class: 'panel', onsubmit: (e) => { e.preventDefault(); create(); } },
    h('h1', {}, 'Sessions'),
    h('p', { class: 'hint' }, 'A conversation with one agent: each message is a job that sees the ones before it and the files they left, on whichever worker is free.'),
    h('div', { class: 'row' },
      h('div', {}, h('label', { for: 'session-agent' }, 'Agent'), agent),
      h('div', {}, h('label', { for: 'session-title' }, 'Title'), title),
      h('div', { class: 'shrink' }, start)),
    about, problem);
  const rows = h('tbody');
  const more = h('button', { type: 'button', hidden: true }, 'Load more');
  const empty = h('p', { class: 'muted', hidden: true }, 'No sessions yet.');
  fill(main, form, h('h2', {}, 'Your sessions'),
    h('table', { class: 'stack' }, h('thead', {}, h('tr', {},
      ['Session', 'Agent', 'Title', 'Turns', 'Created'].map((t) => h('th', {}, t)))), rows),
    empty, h('div', { class: 'actions' }, more));
  loadAgents(agent, about, null, problem);

  let cursor = null;
  const page = async () => {
    try {
      const query = new URLSearchParams({ limit: '25' });
      if (cursor) query.set('cursor', cursor);
      const list = await api(`/v1/sessions?${query}`);
      rows.append(...list.sessions.map(row));
      cursor = list.next_cursor || null;
      more.hidden = !cursor;
      empty.hidden = rows.children.length > 0;
    } catch (e) { problem.textContent = `${e.message} (${e.code})`; }
  };
  more.addEventListener('click', page);
  page();

  async function create() {
    problem.textContent = '';
    start.disabled = true;
    try {
      const body = { agent: agent.value };
      if (title.value.trim()) body.title = title.value.trim();
      const session = await api('/v1/sessions', { method: 'POST', json: body });
      location.hash = `#/sessions/${session.session_id}`;
    } catch (e) {
      problem.textContent = `${e.message} (${e.code})`;
    } finally {
      start.disabled = false;
    }
  }
}

function row(s) {
  const cells = [
    h('a', { class: 'mono', href: `#/sessions/${s.session_id}` }, s.session_id.slice(-8)),
    s.agent, s.title || '', String(s.turn_count), when(s.created_at)];
  const labels = ['Session', 'Agent', 'Title', 'Turns', 'Created'];
  return h('tr', {}, cells.map((c, i) => h('td', { 'data-label': labels[i], class: 'wrap' }, c)));
}
