// Job: status and attempts, the output live (resuming after the last event seen), details, files, Cancel/Retry.

import { api, blob, follow } from './api.js';
import { h, fill, statusBadge, when, duration, bytes, copy, startDownload, toast } from './dom.js';
import { LogView } from './log.js';

const TERMINAL = ['completed', 'failed', 'timeout', 'cancelled'];

export function render(main, [id]) {
  const stop = new AbortController();
  const view = parts(id);
  fill(main, view.root);
  load(id, view, stop.signal);
  return () => stop.abort();
}

function parts(id) {
  const log = new LogView();
  const el = {
    title: h('h1', {}, 'Job ', h('span', { class: 'mono' }, id)),
    status: h('span'), live: h('span', { class: 'hint', 'aria-live': 'polite' }),
    cancel: h('button', { type: 'button' }, 'Cancel'), retry: h('button', { type: 'button' }, 'Retry'),
    curl: h('button', { type: 'button', class: 'quiet' }, 'Copy as curl'),
    cli: h('button', { type: 'button', class: 'quiet' }, 'Copy as fleet command'),
    facts: h('dl', { class: 'facts' }), files: h('div'), attempts: h('div'), problem: h('p', { class: 'error', role: 'alert' }),
    search: h('input', { type: 'search', placeholder: 'Search the output', 'aria-label': 'Search the output' }),
    followButton: h('button', { type: 'button', hidden: true }, 'Follow'),
    log,
  };
  el.search.addEventListener('input', () => log.filter(el.search.value));
  el.followButton.addEventListener('click', () => log.follow());
  log.onFollow = (on) => { el.followButton.hidden = on; };
  el.root = h('div', {},
    el.title,
    h('div', { class: 'actions' }, el.status, el.live, el.cancel, el.retry, el.curl, el.cli),
    el.problem,
    h('h2', {}, 'Output'),
    h('div', { class: 'log-tools' }, el.search, el.followButton,
      h('span', { class: 'hint' }, 'stderr lines are marked ▍ and shown in red')),
    log.box,
    h('h2', {}, 'Files'), el.files,
    h('h2', {}, 'Details'), h('div', { class: 'panel' }, el.facts),
    el.attempts);
  return el;
}

async function load(id, view, signal) {
  let record;
  try {
    record = await api(`/v1/jobs/${id}`, { signal });
  } catch (e) {
    if (!signal.aborted) view.problem.textContent = `${e.message} (${e.code})`;
    return;
  }
  show(view, record);
  wireButtons(id, view, signal);
  stream(id, view, signal, record);
}

/** Follows the job's events; called again after a retry, it resumes after the last event shown. */
function stream(id, view, signal, record) {
  const seen = view.seen ??= { lastId: null, attempt: 0, output: new Map(), any: false };
  const onEvent = ({ id: eventId, data }) => {
    if (eventId !== undefined) seen.lastId = eventId;
    if (data.type === 'output') {
      // A resumed stream may repeat a chunk; (attempt, seq) says which were shown.
      if ((seen.output.get(data.attempt) || 0) >= data.seq) return;
      seen.output.set(data.attempt, data.seq);
      if (seen.attempt && data.attempt !== seen.attempt) view.log.note(`— attempt ${data.attempt} —`);
      seen.attempt = data.attempt;
      seen.any = true;
      view.log.write(data.stream, data.text);
    } else if (data.type === 'message') {
      // Assistant text: a model's tokens join up; a CLI's whole messages each end their line.
      seen.any = true;
      view.log.write('stdout', data.delta ? data.text : `${data.text}\n`);
    } else if (data.type === 'tool_call') {
      seen.any = true;
      view.log.note(`⚙ ${data.name} ${clip(JSON.stringify(data.input ?? null), 160)}`);
    } else if (data.type === 'tool_result') {
      view.log.note(`${data.is_error ? '✗' : '↳'} ${clip((data.output || '').split('\n')[0], 160)}`);
    } else if (data.type === 'status') {
      view.status.replaceChildren(statusBadge(data.status));
    } else if (data.type === 'output_limit') {
      view.log.note('— the live output stops here: the rest is in the stored log —');
    } else if (data.type === 'end') {
      if (!seen.any) replayRecord(view.log, data.record);
      show(view, data.record);
    }
  };
  const onState = (state) => { view.live.textContent = state === 'live' ? '' : 'reconnecting…'; };
  // One stream at a time, so output stays in order; a retry while one runs follows on when it ends.
  if (view.streaming) { view.again = true; return; }
  view.streaming = true;
  follow(`/v1/jobs/${id}/events`, { onEvent, onState, signal, lastId: seen.lastId })
    .then(() => {
      view.live.textContent = '';
      view.streaming = false;
      if (view.again) { view.again = false; stream(id, view, signal, view.record); }
    })
    .catch((e) => {
      view.streaming = false;
      if (e.status === 404 && TERMINAL.includes(record.status)) replayRecord(view.log, record);
      else view.problem.textContent = `Live output stopped: ${e.message}`;
    });
}

function clip(text, max) {
  return text.length > max ? `${text.slice(0, max)}…` : text;
}

/** The record's own copy of the output, for jobs whose events have expired. */
function replayRecord(log, record) {
  if (record.stdout) log.write('stdout', record.stdout);
  if (record.stderr) log.write('stderr', record.stderr);
  const cut = (record.stdout_truncated_bytes || 0) + (record.stderr_truncated_bytes || 0);
  if (cut) log.note(`— ${bytes(cut)} more in the stored logs (Files) —`);
}

function show(view, record) {
  view.status.replaceChildren(statusBadge(record.status));
  const ended = TERMINAL.includes(record.status);
  view.cancel.disabled = ended;
  view.retry.disabled = !['failed', 'timeout', 'cancelled'].includes(record.status);
  view.record = record;
  showFacts(view.facts, record);
  showFiles(view.files, record);
  showAttempts(view.attempts, record);
}

function showFacts(dl, r) {
  const rows = [
    ['Agent', r.request.agent], ['Status', r.status], ['Attempt', r.attempt], ['Worker', r.worker],
    ['Owner', r.request.owner_name || r.request.owner],
    ['Submitted', when(r.request.submitted_at)], ['Started', when(r.started_at)], ['Finished', when(r.finished_at)],
    ['Took', duration(r.started_at, r.finished_at)], ['Exit code', r.exit_code], ['Signal', r.signal],
    ['Stopped by', r.killed], ['Error', r.error && `${r.error.code}: ${r.error.message}`],
    ['Answer', r.answer && h('pre', { class: 'mono preview' }, r.answer)],
    ['Tokens', r.usage && `${r.usage.input_tokens} in, ${r.usage.output_tokens} out${r.usage.cost_usd != null ? `, $${r.usage.cost_usd.toFixed(4)}` : ''}`],
    ['Tool calls', r.tool_calls || null],
    ['Agent session', r.agent_session_id && h('span', { class: 'mono' }, r.agent_session_id)],
    ['Resources', r.resources && `${r.resources.wall_ms} ms wall, ${r.resources.user_cpu_ms + r.resources.system_cpu_ms} ms CPU, ${Math.round(r.resources.max_rss_kb / 1024)} MB peak memory`],
    ['Message', h('pre', { class: 'mono preview' }, r.request.message)],
    ['Context', r.request.context && h('pre', { class: 'mono preview' }, r.request.context)],
    ['Metadata', Object.keys(r.request.metadata || {}).length ? JSON.stringify(r.request.metadata) : null],
    ['Timeout', r.request.timeout && `${r.request.timeout} s`],
  ];
  fill(dl, rows.filter(([, v]) => v !== undefined && v !== null && v !== '')
    .map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

function showFiles(box, r) {
  const files = [...(r.files || []), ...(r.logs || [])];
  if (!files.length) { fill(box, h('p', { class: 'muted' }, 'No files.')); return; }
  const preview = h('div');
  const item = (f) => h('li', {},
    h('span', { class: 'mono' }, f.name), h('span', { class: 'muted' }, bytes(f.size)),
    h('button', { type: 'button', 'aria-label': `Download ${f.name}`, onclick: () => download(r.id, f.name) }, 'Download'),
    previewable(f) && h('button', { type: 'button', class: 'quiet', 'aria-label': `Preview ${f.name}`,
      onclick: () => showPreview(preview, r.id, f) }, 'Preview'));
  fill(box, h('ul', { class: 'files' }, files.map(item)),
    h('div', { class: 'actions' }, h('button', { type: 'button',
      onclick: () => downloadAll(r.id) }, 'Download all (.tar)')),
    preview);
}

function previewable(f) {
  return f.size <= 2 * 1024 * 1024 && /^(text\/|image\/(png|jpeg|gif|webp|svg\+xml)|application\/json)/.test(f.content_type || '');
}

async function showPreview(box, id, f) {
  try {
    const data = await blob(fileUrl(id, f.name));
    if ((f.content_type || '').startsWith('image/') && !f.content_type.includes('svg')) {
      fill(box, h('div', { class: 'preview' }, h('img', { src: URL.createObjectURL(data), alt: f.name })));
    } else {
      fill(box, h('pre', { class: 'preview mono' }, (await data.text()).slice(0, 200000)));
    }
  } catch (e) { toast(e.message); }
}

function fileUrl(id, name) {
  return `/v1/jobs/${id}/artifacts/${name.split('/').map(encodeURIComponent).join('/')}`;
}

// Through a short-lived download link, so the browser streams the file to disk however large it is (a fetched
// blob would sit in the page's memory first, and a plain link cannot carry the credential).
async function download(id, name) {
  await downloadThroughLink(id, { file: name }, name.split('/').pop());
}

async function downloadAll(id) {
  await downloadThroughLink(id, {}, `${id}.tar`);
}

async function downloadThroughLink(id, which, filename) {
  try {
    const { url } = await api(`/v1/jobs/${id}/links`, { method: 'POST', json: which });
    startDownload(url, filename);
  } catch (e) { toast(e.message); }
}

function showAttempts(box, r) {
  if (!r.history?.length) { fill(box); return; }
  fill(box, h('h2', {}, 'Earlier runs'), h('table', { class: 'stack' },
    h('thead', {}, h('tr', {}, ['Status', 'Started', 'Finished', 'Exit', 'Error'].map((t) => h('th', {}, t)))),
    h('tbody', {}, r.history.map((run) => h('tr', {},
      h('td', { 'data-label': 'Status' }, statusBadge(run.status)),
      h('td', { 'data-label': 'Started' }, when(run.started_at)),
      h('td', { 'data-label': 'Finished' }, when(run.finished_at)),
      h('td', { 'data-label': 'Exit' }, run.exit_code ?? ''),
      h('td', { 'data-label': 'Error', class: 'wrap' }, run.error ? `${run.error.code}: ${run.error.message}` : ''))))));
}

function wireButtons(id, view, signal) {
  view.cancel.addEventListener('click', async () => {
    try {
      await api(`/v1/jobs/${id}/cancel`, { method: 'POST' });
      toast('Cancel requested');
    } catch (e) { view.problem.textContent = `${e.message} (${e.code})`; }
  });
  view.retry.addEventListener('click', async () => {
    try {
      const record = await api(`/v1/jobs/${id}/retry`, { method: 'POST' });
      show(view, record.record || record);
      view.log.note('— retried —');
      stream(id, view, signal, view.record);
    } catch (e) { view.problem.textContent = `${e.message} (${e.code})`; }
  });
  view.curl.addEventListener('click', () => copy(curlOf(view.record), 'curl command'));
  view.cli.addEventListener('click', () => copy(cliOf(view.record), 'fleet command'));
}

function shellQuote(text) {
  return `'${String(text).replace(/'/g, `'\\''`)}'`;
}

function curlOf(r) {
  const body = { agent: r.request.agent, message: r.request.message };
  if (r.request.context) body.context = r.request.context;
  if (r.request.timeout) body.timeout = r.request.timeout;
  return `curl -s -X POST '${location.origin}/v1/jobs?wait=30' -H 'content-type: application/json' -H "authorization: Bearer $FLEET_API_KEY" -d ${shellQuote(JSON.stringify(body))}`;
}

function cliOf(r) {
  const parts = ['fleet', 'run', r.request.agent, shellQuote(r.request.message), '--url', location.origin];
  if (r.request.context) parts.push('--context', shellQuote(r.request.context));
  if (r.request.timeout) parts.push('--timeout', String(r.request.timeout));
  return parts.join(' ');
}
