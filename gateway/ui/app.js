// The console's shell: the screen table, the hash router, the theme toggle and the sign-in dialog.
// To add a screen, write a module exporting `render(main, params, query)` (which may return a cleanup function)
// and add one line to SCREENS.

import { credentials, onSignInNeeded, whoAmI } from './api.js';
import { h, fill } from './dom.js';
import { askSignIn } from './signin.js';
import * as run from './run.js';
import * as job from './job.js';
import * as history from './history.js';
import * as fleet from './fleet.js';
import * as sessions from './sessions.js';
import * as session from './session.js';
import * as sharing from './sharing.js';

const SCREENS = [
  { pattern: /^\/run$/, title: 'Run', nav: '#/run', screen: run },
  { pattern: /^\/jobs\/([0-9a-f-]{36})$/, title: 'Job', screen: job, under: '#/history' },
  { pattern: /^\/history$/, title: 'History', nav: '#/history', screen: history },
  { pattern: /^\/sessions$/, title: 'Sessions', nav: '#/sessions', screen: sessions },
  { pattern: /^\/sessions\/([0-9a-f-]{36})$/, title: 'Session', screen: session, under: '#/sessions' },
  { pattern: /^\/fleet$/, title: 'Fleet', nav: '#/fleet', screen: fleet },
  // `needs`: the scope a screen is for; its link shows only to callers who hold it.
  { pattern: /^\/sharing$/, title: 'Sharing', nav: '#/sharing', screen: sharing, needs: 'configure_sharing' },
];

const main = document.getElementById('screen');
let cleanup = null;
let currentNav = null;

function route() {
  const [path, search = ''] = (location.hash.slice(1) || '/run').split('?');
  const found = SCREENS.find((s) => s.pattern.test(path));
  if (!found) { location.replace('#/run'); return; }
  if (typeof cleanup === 'function') cleanup();
  cleanup = null;
  const params = path.match(found.pattern).slice(1);
  document.title = `${found.title} · fleet`;
  currentNav = found.nav || found.under;
  markNav(currentNav);
  fill(main);
  cleanup = found.screen.render(main, params, new URLSearchParams(search));
  main.focus({ preventScroll: true });
}

function markNav(current) {
  for (const link of document.querySelectorAll('#nav a')) {
    if (link.getAttribute('href') === current) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
}

/** The screens' links, less those needing a scope the caller lacks (asked quietly: no sign-in prompt). */
async function setUpNav() {
  const me = await whoAmI();
  const scopes = me ? me.scopes : {};
  fill(document.getElementById('nav'),
    SCREENS.filter((s) => s.nav && (!s.needs || scopes[s.needs])).map((s) => h('a', { href: s.nav }, s.title)),
    h('a', { href: '/qr', title: 'Open the console on a phone' }, 'Phone'));
  markNav(currentNav);
}

const THEMES = ['auto', 'light', 'dark'];
function setUpTheme() {
  const button = document.getElementById('theme');
  const apply = (theme) => {
    if (theme === 'auto') delete document.documentElement.dataset.theme;
    else document.documentElement.dataset.theme = theme;
    button.setAttribute('aria-label', `Theme: ${theme}`);
    button.title = `Theme: ${theme}`;
  };
  let theme = localStorage.getItem('fleet.theme') || 'auto';
  apply(theme);
  button.addEventListener('click', () => {
    theme = THEMES[(THEMES.indexOf(theme) + 1) % THEMES.length];
    localStorage.setItem('fleet.theme', theme);
    apply(theme);
  });
}

function setUpSignOut() {
  const button = document.getElementById('signout');
  const show = () => { button.hidden = !credentials.get(); };
  button.addEventListener('click', () => { credentials.clear(); route(); });
  document.addEventListener('fleet:credentials', show);
  show();
}

onSignInNeeded(askSignIn);
setUpNav();
document.addEventListener('fleet:credentials', setUpNav);
setUpTheme();
setUpSignOut();
window.addEventListener('hashchange', route);
route();
