// The dashboard's entry: the token dialog, who the caller is (GET /api/v1/whoami), and the pages by URL hash
// (#/ services, #/service/<id>, #/deploy, #/plugins).

import { ApiError, get, onTokenNeeded, setToken, token } from './api.js';
import { fill, h } from './dom.js';
import { deployPage, listPage, pluginsPage } from './pages.js';
import { servicePage } from './service.js';

const RANK = { viewer: 1, operator: 2, admin: 3 };
const app = {
  who: null, // {name, role, groups}, or null on a server without /whoami (buttons shown; a 403 hides them)
  may(role) { return !this.who || (RANK[this.who.role] || 0) >= RANK[role]; },
  roleText() { return this.who ? `${this.who.name}, ${this.who.role}` : 'of an unknown role'; },
  forbidden(message) { // the server refused an action: we took the caller for more than it is
    if (this.who && this.who.role !== 'viewer') return;
    this.who = { name: this.who?.name || 'you', role: 'viewer', groups: [] };
    showWho();
    route();
    setTimeout(() => { const said = document.getElementById('action-result'); if (said) said.textContent = message; }, 100);
  },
};

// --- the token: asked when the API answers 401, kept in sessionStorage only
let asking = null;
function askToken(message) {
  if (asking) return asking;
  asking = new Promise((resolve) => {
    const dialog = document.getElementById('token-dialog');
    const form = document.getElementById('token-form');
    const input = document.getElementById('token-input');
    document.getElementById('token-why').textContent = token()
      ? `The server did not accept the token: ${message || 'unknown API token'}.`
      : (message || 'Type an API token (README: Authentication).');
    input.value = '';
    form.onsubmit = (ev) => {
      ev.preventDefault();
      const t = input.value.trim();
      if (!t) return;
      setToken(t);
      dialog.close();
      resolve();
    };
    dialog.oncancel = (ev) => ev.preventDefault(); // nothing works without one
    dialog.showModal();
    input.focus();
  }).then(async () => {
    asking = null;
    await loadWho(); // the new token's role
  });
  return asking;
}
onTokenNeeded(askToken);

async function loadWho() {
  try {
    app.who = (await get('/api/v1/whoami')).data;
  } catch (e) {
    if (!(e instanceof ApiError && (e.status === 404 || e.status === 405))) throw e;
    app.who = null; // an older server: roles show by what it refuses
  }
  showWho();
}

function showWho() {
  const who = document.getElementById('who');
  who.textContent = app.who ? `${app.who.name} (${app.who.role})` : '';
  document.getElementById('signout').hidden = !token();
}

// --- pages
let current = null;
function route() {
  current?.abort();
  const ac = new AbortController();
  current = ac;
  const main = document.getElementById('main');
  const hash = location.hash || '#/';
  let page = 'list';
  let run;
  if (hash.startsWith('#/service/')) {
    page = 'service';
    run = () => servicePage(main, decodeURIComponent(hash.slice('#/service/'.length)), app, ac.signal);
  } else if (hash === '#/deploy') {
    page = 'deploy';
    run = () => deployPage(main, app, ac.signal);
  } else if (hash === '#/plugins') {
    page = 'plugins';
    run = () => pluginsPage(main, app, ac.signal);
  } else {
    run = () => listPage(main, app, ac.signal);
    document.title = 'Services — ModelServeShim';
  }
  document.querySelectorAll('[data-nav]').forEach((a) => {
    if (a.dataset.nav === page) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  });
  document.querySelectorAll('[data-nav="deploy"]').forEach((a) => { a.hidden = !app.may('operator'); });
  Promise.resolve().then(run).catch((e) => {
    if (!ac.signal.aborted) fill(main, h('p', { class: 'error', role: 'alert' }, e.message));
  });
}

document.getElementById('signout').addEventListener('click', () => {
  setToken('');
  location.reload();
});
window.addEventListener('hashchange', route);

(async () => {
  try {
    await loadWho();
  } catch (e) {
    fill(document.getElementById('main'), h('p', { class: 'error', role: 'alert' }, `Cannot reach the server: ${e.message}`));
    return;
  }
  route();
  document.body.dataset.ready = 'true';
})();
