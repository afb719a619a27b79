// History: the job list with filters (kept in the address, so a view can be bookmarked), cursor paging, live
// updates that can be paused, and cancel or retry for several jobs at once.

import { api, whoAmI } from './api.js';
import { h, fill, statusBadge, when, duration, toast } from './dom.js';

const STATUSES = ['queued', 'running', 'completed', 'failed', 'timeout', 'cancelled'];
const FILTERS = ['agent', 'status', 'owner', 'q', 'metadata', 'submitted_after', 'submitted_before'];
const LIVE_EVERY_MS = 3000;

export function render(main, _params, query) {
  const stop = new AbortController();
  const form = filterForm(query);
  const rows = h('tbody');
  const more = h('button', { type: 'button', hidden: true }, 'Load more');
  const summary = h('p', { class: 'hint', 'aria-live': 'polite' });
  const problem = h('p', { class: 'error', role: 'alert' });
  const live = h('input', { type: 'checkbox', id: 'history-live', checked: true });
  const selectAll = h('input', { type: 'checkbox', 'aria-label': 'Select all shown jobs' });
  const bulk = bulkButtons(rows, () => refresh());
  fill(main, h('h1', {}, 'History'), form.element,
    h('div', { class: 'actions' }, live, h('label', { for: 'history-live', class: 'inline' }, 'Live updates'),
      bulk.cancel, bulk.retry),
    summary, problem,
    h('table', { class: 'stack' },
      h('thead', {}, h('tr', {}, h('th', {}, selectAll), ['Job', 'Agent', 'Status', 'Owner', 'Submitted', 'Took', 'Exit']
        .map((t) => h('th', {}, t)))),
      rows),
    h('div', { class: 'actions' }, more));
  selectAll.addEventListener('change', () => {
    for (const box of rows.querySelectorAll('input[type=checkbox]')) box.checked = selectAll.checked;
  });

  let cursor = null;
  async function page(append) {
    const params = form.params();
    params.set('limit', '50');
    if (append && cursor) params.set('cursor', cursor);
    try {
      const list = await api(`/v1/jobs?${params}`, { signal: stop.signal });
      const shown = rows.querySelectorAll('tr').length;
      const selected = append ? new Set() : selectedIds(rows);
      if (!append) fill(rows);
      rows.append(...list.jobs.map((j) => row(j, selected.has(j.id))));
      cursor = list.next_cursor || null;
      more.hidden = !cursor;
      const count = (append ? shown : 0) + list.jobs.length;
      summary.textContent = `${count} shown${list.total !== undefined ? ` of ${list.total}` : ''}`;
      problem.textContent = '';
    } catch (e) {
      if (!stop.signal.aborted) problem.textContent = `${e.message} (${e.code})`;
    }
  }
  const refresh = () => page(false);
  more.addEventListener('click', () => page(true));
  form.onchange = () => { location.hash = `#/history?${form.params()}`; };
  refresh();
  const timer = setInterval(() => {
    // Live updates refresh the first page only while the user is looking at it.
    if (live.checked && !cursorAdvanced() && document.visibilityState === 'visible') refresh();
  }, LIVE_EVERY_MS);
  const cursorAdvanced = () => rows.querySelectorAll('tr').length > 50;
  return () => { stop.abort(); clearInterval(timer); };
}

function filterForm(query) {
  const fields = {
    agent: h('select', { id: 'filter-agent' }, h('option', { value: '' }, 'any')),
    status: h('select', { id: 'filter-status' }, h('option', { value: '' }, 'any'),
      STATUSES.map((s) => h('option', { value: s }, s))),
    owner: h('input', { id: 'filter-owner', placeholder: 'key:… or user:…', list: 'filter-owners' }),
    q: h('input', { id: 'filter-q', type: 'search', placeholder: 'in the message or error' }),
    metadata: h('input', { id: 'filter-metadata', placeholder: 'key:value' }),
    submitted_after: h('input', { id: 'filter-after', type: 'datetime-local' }),
    submitted_before: h('input', { id: 'filter-before', type: 'datetime-local' }),
  };
  const labels = { agent: 'Agent', status: 'Status', owner: 'Owner', q: 'Text', metadata: 'Metadata',
    submitted_after: 'Submitted after', submitted_before: 'Submitted before' };
  api('/v1/agents').then(({ agents }) => {
    fields.agent.append(...agents.map((a) => h('option', { value: a.name }, a.name)));
    fields.agent.value = query.get('agent') || '';
  }).catch(() => {});
  const owners = h('datalist', { id: 'filter-owners' });
  whoAmI().then((me) => { if (me?.principal) owners.append(h('option', { value: me.principal }, 'my jobs')); });
  for (const name of FILTERS) {
    const value = query.get(name) || '';
    fields[name].value = name.startsWith('submitted') && value ? localInput(value) : value;
  }
  const form = {
    params() {
      const params = new URLSearchParams();
      for (const name of FILTERS) {
        let value = fields[name].value.trim();
        if (!value) continue;
        if (name.startsWith('submitted')) value = new Date(value).toISOString();
        params.set(name, value);
      }
      return params;
    },
  };
  form.element = h('form', { class: 'panel row', onsubmit: (e) => { e.preventDefault(); form.onchange(); },
    onchange: () => form.onchange() },
  FILTERS.map((name) => h('div', {}, h('label', { for: fields[name].id }, labels[name]), fields[name])),
  h('div', { class: 'shrink' }, h('button', { type: 'submit', class: 'primary' }, 'Filter')), owners);
  return form;
}

function localInput(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  return new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
}

function row(job, selected) {
  return h('tr', { dataset: { id: job.id, status: job.status } },
    h('td', {}, h('input', { type: 'checkbox', 'aria-label': `Select job ${job.id}`, checked: selected })),
    h('td', { 'data-label': 'Job', class: 'wrap' }, h('a', { class: 'mono', href: `#/jobs/${job.id}` }, job.id.slice(-8)),
      ' ', h('span', { class: 'muted' }, excerpt(job.request.message))),
    h('td', { 'data-label': 'Agent' }, job.request.agent),
    h('td', { 'data-label': 'Status' }, statusBadge(job.status)),
    h('td', { 'data-label': 'Owner', class: 'wrap muted' }, job.request.owner || ''),
    h('td', { 'data-label': 'Submitted' }, when(job.request.submitted_at)),
    h('td', { 'data-label': 'Took' }, duration(job.started_at, job.finished_at)),
    h('td', { 'data-label': 'Exit' }, job.exit_code ?? ''));
}

function excerpt(text) {
  const line = (text || '').split('\n')[0];
  return line.length > 60 ? `${line.slice(0, 60)}…` : line;
}

function selectedIds(rows) {
  return new Set([...rows.querySelectorAll('tr')]
    .filter((tr) => tr.querySelector('input[type=checkbox]')?.checked).map((tr) => tr.dataset.id));
}

function bulkButtons(rows, refresh) {
  const act = (verb) => async () => {
    const ids = [...selectedIds(rows)];
    if (!ids.length) { toast('Select jobs first'); return; }
    const results = await Promise.allSettled(ids.map((id) => api(`/v1/jobs/${id}/${verb}`, { method: 'POST' })));
    const failed = results.filter((r) => r.status === 'rejected');
    toast(failed.length ? `${ids.length - failed.length} done; ${failed.length} refused: ${failed[0].reason.message}`
      : `${verb === 'cancel' ? 'Cancel' : 'Retry'} sent for ${ids.length} job${ids.length > 1 ? 's' : ''}`);
    refresh();
  };
  return {
    cancel: h('button', { type: 'button', onclick: act('cancel') }, 'Cancel selected'),
    retry: h('button', { type: 'button', onclick: act('retry') }, 'Retry selected'),
  };
}
