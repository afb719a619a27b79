// Run: pick an agent, write the message and context, attach files, send. The draft survives navigation.

import { api } from './api.js';
import { h, fill, bytes } from './dom.js';

const DRAFT = 'fleet.draft';

export function render(main) {
  const draft = JSON.parse(sessionStorage.getItem(DRAFT) || '{}');
  const agent = h('select', { id: 'run-agent', required: true });
  const about = h('p', { class: 'hint', id: 'run-agent-about' });
  const message = h('textarea', { id: 'run-message', rows: 8, required: true, placeholder: 'What the agent gets' });
  const context = h('textarea', { id: 'run-context', rows: 3, placeholder: 'Optional' });
  const timeout = h('input', { id: 'run-timeout', type: 'number', min: 1, step: 'any', placeholder: "agent's default" });
  const target = h('input', { id: 'run-target', placeholder: 'default' });
  const files = fileDrop();
  const problem = h('p', { class: 'error', role: 'alert' });
  const button = h('button', { class: 'primary', type: 'submit' }, 'Run');
  message.value = draft.message || '';
  context.value = draft.context || '';
  const saveDraft = () => sessionStorage.setItem(DRAFT, JSON.stringify({
    agent: agent.value, message: message.value, context: context.value }));
  const form = h('form', { class: 'panel', onsubmit: (e) => { e.preventDefault(); submit(); }, oninput: saveDraft },
    h('h1', {}, 'Run an agent'),
    h('label', { for: 'run-agent' }, 'Agent'), agent, about,
    h('label', { for: 'run-message' }, 'Message'), message,
    h('label', { for: 'run-context' }, 'Context'), context,
    h('div', { class: 'row' },
      h('div', {}, h('label', { for: 'run-timeout' }, 'Timeout (seconds)'), timeout),
      h('div', {}, h('label', { for: 'run-target' }, 'Artifact target'), target)),
    h('label', { for: files.input.id }, 'Files'), files.element,
    h('div', { class: 'actions' }, button, h('span', { class: 'hint' }, 'Ctrl+Enter or ⌘+Enter sends')),
    problem);
  form.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); form.requestSubmit(); }
  });
  fill(main, form);
  loadAgents(agent, about, draft.agent, problem);

  async function submit() {
    problem.textContent = '';
    button.disabled = true;
    const job = { agent: agent.value, message: message.value };
    if (context.value.trim()) job.context = context.value;
    if (timeout.value) job.timeout = Number(timeout.value);
    if (target.value.trim()) job.artifact_target = target.value.trim();
    try {
      const accepted = await api('/v1/jobs', files.chosen.length ? { method: 'POST', form: multipart(job, files.chosen) }
        : { method: 'POST', json: job });
      sessionStorage.setItem(DRAFT, JSON.stringify({ agent: agent.value }));
      location.hash = `#/jobs/${accepted.job_id}`;
    } catch (e) {
      problem.textContent = `${e.message} (${e.code || 'error'})`;
    } finally {
      button.disabled = false;
    }
  }
}

export async function loadAgents(select, about, preferred, problem) {
  try {
    const { agents } = await api('/v1/agents');
    fill(select, agents.map((a) => h('option', { value: a.name }, a.name)));
    if (agents.some((a) => a.name === preferred)) select.value = preferred;
    const describe = () => {
      const a = agents.find((x) => x.name === select.value);
      const kind = a && a.kind && a.kind !== 'command' ? `${a.kind} · ` : '';
      about.textContent = a ? `${kind}${a.description || 'No description.'} · ${a.queued} queued, ${a.running} running` : '';
    };
    select.addEventListener('change', describe);
    describe();
  } catch (e) {
    problem.textContent = `Agents could not be listed: ${e.message}`;
  }
}

function multipart(job, files) {
  const form = new FormData();
  form.append('job', new Blob([JSON.stringify(job)], { type: 'application/json' }));
  for (const file of files) form.append('file', file, file.name);
  return form;
}

function fileDrop() {
  const chosen = [];
  const input = h('input', { id: 'run-files', type: 'file', multiple: true });
  const list = h('ul', { class: 'files' });
  const show = () => fill(list, chosen.map((f, i) => h('li', {}, h('span', { class: 'mono' }, f.name),
    h('span', { class: 'muted' }, bytes(f.size)),
    h('button', { type: 'button', class: 'quiet', 'aria-label': `Remove ${f.name}`,
      onclick: () => { chosen.splice(i, 1); show(); } }, '✕'))));
  const add = (fileList) => { chosen.push(...fileList); show(); };
  input.addEventListener('change', () => { add(input.files); input.value = ''; });
  const element = h('div', { class: 'drop' }, input, h('p', { class: 'hint' }, 'or drop files here'), list);
  element.addEventListener('dragover', (e) => { e.preventDefault(); element.classList.add('over'); });
  element.addEventListener('dragleave', () => element.classList.remove('over'));
  element.addEventListener('drop', (e) => { e.preventDefault(); element.classList.remove('over'); add(e.dataTransfer.files); });
  return { element, input, chosen };
}
