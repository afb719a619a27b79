// Sharing: where the whole fleet stores new jobs' files (`/configure-sharing`), for callers with that scope. Stored
// secrets are never shown; saving asks for them again, and the gateway checks the target before it takes it.

import { api } from './api.js';
import { h, fill, when, toast } from './dom.js';

const METHODS = [
  ['default', 'The configured target'], ['local', 'Local disk'], ['ftp', 'FTP server'], ['s3', 'S3 bucket'],
];

// [request field, label, input attributes, the stored setting it shows]
const FIELDS = {
  ftp: [
    ['ftp_host', 'Host', { required: true }, 'ftp_host'],
    ['ftp_port', 'Port', { type: 'number', min: 1, max: 65535, placeholder: '21' }, 'ftp_port'],
    ['ftp_user', 'User', {}, 'ftp_user'],
    ['ftp_pass', 'Password', { type: 'password', autocomplete: 'off' }, null],
    ['ftp_path', 'Directory', { placeholder: '/' }, 'ftp_base_path'],
    ['ftp_passive', 'Passive mode', { type: 'checkbox', checked: true }, 'ftp_passive'],
    ['ftp_tls', 'FTPS (explicit TLS)', { type: 'checkbox' }, 'ftp_tls'],
  ],
  s3: [
    ['s3_bucket', 'Bucket', { required: true }, 's3_bucket'],
    ['s3_region', 'Region', { placeholder: 'us-east-1' }, 's3_region'],
    ['s3_endpoint', 'Endpoint', { placeholder: 'AWS itself' }, 's3_endpoint'],
    ['s3_path_style', 'Path-style addressing', { type: 'checkbox' }, 's3_path_style'],
    ['s3_access_key_id', 'Access key id', { autocomplete: 'off' }, 's3_access_key_id'],
    ['s3_secret_access_key', 'Secret access key', { type: 'password', autocomplete: 'off' }, null],
  ],
};

export function render(main) {
  const current = h('div', { class: 'panel', 'aria-live': 'polite' }, h('p', { class: 'muted' }, 'Loading…'));
  const method = h('select', { id: 'sharing-method' },
    METHODS.map(([value, label]) => h('option', { value }, label)));
  const inputs = {};
  const groups = Object.fromEntries(Object.entries(FIELDS).map(([name, fields]) =>
    [name, h('fieldset', { class: 'row', hidden: true }, h('legend', {}, name.toUpperCase()),
      fields.map(([field, label, attrs]) => fieldBox(inputs, field, label, attrs)))]));
  const problem = h('p', { class: 'error', role: 'alert' });
  const save = h('button', { type: 'submit', class: 'primary' }, 'Save');
  // A hidden group is disabled too, so its required fields do not block saving another method.
  const showGroup = () => {
    for (const [name, g] of Object.entries(groups)) g.hidden = g.disabled = name !== method.value;
  };
  method.addEventListener('change', showGroup);
  const form = h('form', { class: 'panel', onsubmit: (e) => { e.preventDefault(); submit(); } },
    h('label', { for: 'sharing-method' }, 'Store new jobs\' files in'), method, Object.values(groups),
    h('p', { class: 'hint' }, 'Stored passwords and keys are never shown: enter them again to save.'),
    h('div', { class: 'actions' }, save), problem);
  fill(main, h('h1', {}, 'Sharing'), current, h('h2', {}, 'Change'), form);

  const show = (view) => {
    showCurrent(current, view);
    method.value = view.method;
    prefill(inputs, view);
    showGroup();
  };
  api('/configure-sharing').then(show, (e) => { fill(current, h('p', { class: 'error' }, `${e.message} (${e.code})`)); });

  async function submit() {
    problem.textContent = '';
    save.disabled = true;
    try {
      const view = await api('/configure-sharing', { method: 'POST', json: request(method.value, inputs) });
      show(view);
      toast('Sharing target saved');
    } catch (e) {
      problem.textContent = `${e.message} (${e.code})`;
    } finally {
      save.disabled = false;
    }
  }
}

function fieldBox(inputs, field, label, attrs) {
  const id = `sharing-${field}`;
  const input = h('input', { id, ...attrs });
  inputs[field] = input;
  if (attrs.type === 'checkbox') {
    return h('div', { class: 'check' }, input, h('label', { for: id, class: 'inline' }, label));
  }
  return h('div', {}, h('label', { for: id }, label), input);
}

function showCurrent(box, view) {
  const label = METHODS.find(([value]) => value === view.method)?.[1] || view.method;
  fill(box, h('dl', { class: 'facts' },
    h('dt', {}, 'New jobs\' files go to'), h('dd', { class: 'mono wrap' }, view.location),
    h('dt', {}, 'Method'), h('dd', {}, label),
    h('dt', {}, 'Target id'), h('dd', { class: 'mono' }, view.target_id),
    h('dt', {}, 'Changed'), h('dd', {}, view.updated_at ? when(view.updated_at) : 'never (the configuration)')));
}

function prefill(inputs, view) {
  for (const fields of Object.values(FIELDS)) {
    for (const [field, , attrs, stored] of fields) {
      const input = inputs[field];
      const value = stored ? view.settings[stored] : undefined;
      if (attrs.type === 'checkbox') input.checked = value ?? Boolean(attrs.checked);
      else input.value = value === undefined || value === null ? '' : String(value);
    }
  }
}

/** The request body: the chosen method and its fields that were filled in. */
function request(method, inputs) {
  const body = { method };
  for (const [field, , attrs] of FIELDS[method] || []) {
    const input = inputs[field];
    if (attrs.type === 'checkbox') body[field] = input.checked;
    else if (input.value.trim() === '') continue;
    else if (attrs.type === 'number') body[field] = Number(input.value);
    else body[field] = input.value.trim();
  }
  return body;
}
