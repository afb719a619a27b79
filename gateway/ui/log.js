// A job's output as a virtual list: only the lines on screen are in the DOM, so a log of 100,000 lines scrolls and
// streams without freezing the tab. Follows the end until the user scrolls up; ANSI SGR colours are rendered.

import { h, fill } from './dom.js';

const LINE = 18;
const OVERSCAN = 30;

export class LogView {
  constructor() {
    this.lines = [];          // {stream, text}
    this.partial = { stdout: null, stderr: null };
    this.shown = [];          // indexes of lines matching the search
    this.search = '';
    this.following = true;
    this.box = h('div', { class: 'log', tabindex: 0, role: 'log', 'aria-label': 'Output' });
    this.inner = h('div', { class: 'lines' });
    this.spacer = h('div');
    this.box.append(this.spacer, this.inner);
    this.box.addEventListener('scroll', () => {
      const atEnd = this.box.scrollTop + this.box.clientHeight >= this.box.scrollHeight - LINE;
      if (this.following !== atEnd) { this.following = atEnd; this.onFollow?.(atEnd); }
      this.schedule();
    });
    this.empty = true;
    this.schedule();
  }

  /** Adds output text; a line still being written is completed by the next chunk of its stream. */
  write(stream, text) {
    const parts = text.split('\n');
    const open = this.partial[stream];
    if (open !== null) {
      this.lines[open].text += parts.shift();
      if (this.matches(this.lines[open]) && this.shown.lastIndexOf(open) < 0) this.shown.push(open);
    }
    this.partial[stream] = null;
    parts.forEach((part, i) => {
      const last = i === parts.length - 1;
      if (last && part === '') return;
      this.push({ stream, text: part });
      if (last) this.partial[stream] = this.lines.length - 1;
    });
    this.schedule();
  }

  note(text) {
    this.partial = { stdout: null, stderr: null };
    this.push({ stream: 'note', text });
    this.schedule();
  }

  push(line) {
    this.lines.push(line);
    if (this.matches(line)) this.shown.push(this.lines.length - 1);
  }

  matches(line) {
    return !this.search || line.text.toLowerCase().includes(this.search);
  }

  filter(text) {
    this.search = text.toLowerCase();
    this.shown = [];
    this.lines.forEach((line, i) => { if (this.matches(line)) this.shown.push(i); });
    this.schedule();
  }

  follow() {
    this.following = true;
    this.onFollow?.(true);
    this.schedule();
  }

  text() {
    return this.lines.map((l) => l.text).join('\n');
  }

  schedule() {
    if (this.pending) return;
    this.pending = requestAnimationFrame(() => { this.pending = 0; this.draw(); });
  }

  draw() {
    const total = this.shown.length;
    this.spacer.style.height = `${total * LINE}px`;
    if (this.following) this.box.scrollTop = this.box.scrollHeight;
    const first = Math.max(0, Math.floor(this.box.scrollTop / LINE) - OVERSCAN);
    const count = Math.ceil(this.box.clientHeight / LINE) + 2 * OVERSCAN;
    const visible = this.shown.slice(first, first + count);
    this.inner.style.top = `${first * LINE}px`;
    if (!total) {
      fill(this.inner, h('div', { class: 'empty' }, this.search ? 'No line matches.' : 'No output yet.'));
      return;
    }
    fill(this.inner, visible.map((i) => this.render(this.lines[i])));
  }

  render(line) {
    return h('div', { class: `line ${line.stream}` }, highlight(ansi(line.text), this.search));
  }
}

/** Splits text at SGR escapes into spans with classes; other escapes are dropped. */
export function ansi(text) {
  const out = [];
  let classes = [];
  const re = /\x1b\[([0-9;]*)([A-Za-z])/g;
  let at = 0;
  let m;
  while ((m = re.exec(text))) {
    if (m.index > at) out.push(span(text.slice(at, m.index), classes));
    at = re.lastIndex;
    if (m[2] !== 'm') continue;
    for (const code of (m[1] || '0').split(';').map(Number)) {
      if (code === 0) classes = [];
      else if ([1, 3, 4].includes(code)) classes.push(`ansi-${code}`);
      else if ((code >= 30 && code <= 37) || (code >= 90 && code <= 97)) {
        classes = classes.filter((c) => !c.startsWith('fg-')).concat(`fg-${code}`);
      } else if (code === 39) classes = classes.filter((c) => !c.startsWith('fg-'));
    }
  }
  if (at < text.length) out.push(span(text.slice(at), classes));
  return out;
}

function span(text, classes) {
  return classes.length ? { text, classes: classes.join(' ') } : { text };
}

function highlight(pieces, search) {
  return pieces.map((piece) => {
    const parts = search ? marked(piece.text, search) : [piece.text];
    return piece.classes ? h('span', { class: piece.classes }, parts) : parts;
  });
}

function marked(text, search) {
  const out = [];
  const lower = text.toLowerCase();
  let at = 0;
  for (let i = lower.indexOf(search); i >= 0; i = lower.indexOf(search, i + search.length)) {
    out.push(text.slice(at, i), h('mark', {}, text.slice(i, i + search.length)));
    at = i + search.length;
  }
  out.push(text.slice(at));
  return out;
}
