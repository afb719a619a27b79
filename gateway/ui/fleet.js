// Fleet: the live workers and the agents with their queues, refreshed every few seconds unless paused.

import { api } from './api.js';
import { h, fill, when } from './dom.js';

export function render(main) {
  const workers = h('div');
  const agents = h('div');
  const problem = h('p', { class: 'error', role: 'alert' });
  const live = h('input', { type: 'checkbox', id: 'fleet-live', checked: true });
  fill(main, h('h1', {}, 'Fleet'),
    h('div', { class: 'actions' }, live, h('label', { for: 'fleet-live', class: 'inline' }, 'Live updates')),
    problem, h('h2', {}, 'Workers'), workers, h('h2', {}, 'Agents'), agents);
  const refresh = async () => {
    try {
      const [w, a] = await Promise.all([api('/v1/workers'), api('/v1/agents')]);
      showWorkers(workers, w.workers);
      showAgents(agents, a.agents);
      problem.textContent = '';
    } catch (e) { problem.textContent = `${e.message} (${e.code})`; }
  };
  refresh();
  const timer = setInterval(() => { if (live.checked && document.visibilityState === 'visible') refresh(); }, 3000);
  return () => clearInterval(timer);
}

function table(headers, rows) {
  return h('table', { class: 'stack' }, h('thead', {}, h('tr', {}, headers.map((t) => h('th', {}, t)))),
    h('tbody', {}, rows.map((cells) => h('tr', {}, cells.map((c, i) => h('td', { 'data-label': headers[i], class: 'wrap' }, c))))));
}

function showWorkers(box, workers) {
  if (!workers.length) { fill(box, h('p', { class: 'muted' }, 'No worker is running.')); return; }
  fill(box, table(['Worker', 'Host', 'Agents', 'Load', 'Version', 'Started'], workers.map((w) => [
    h('span', { class: 'mono' }, w.worker_id), w.host, w.agents.join(', '),
    `${w.in_flight} / ${w.max_concurrent}`, w.version, when(w.started_at)])));
}

function showAgents(box, agents) {
  if (!agents.length) { fill(box, h('p', { class: 'muted' }, 'No agent is configured.')); return; }
  fill(box, table(['Agent', 'Description', 'Queued', 'Running', 'Waiting workers'], agents.map((a) => [
    h('a', { href: `#/history?agent=${encodeURIComponent(a.name)}` }, a.name), a.description || '',
    a.queued, a.running, a.waiting_pulls])));
}
