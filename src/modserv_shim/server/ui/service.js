// The service page: the lifecycle as a stepper (the pipeline's steps under the state they run in), the step
// attempts, the state changes, the pipeline log and the runtime log, live from the event stream (or by polling
// a server without one), and the scale / retry / delete buttons for roles that may use them.

import { ApiError, del, get, post, sid } from './api.js';
import { STATE_WORDS, STATUS_WORDS, age, badge, clock, duration, fill, h, json, sleep } from './dom.js';
import { follow } from './stream.js';

const LIFECYCLE = ['initializing', 'pipeline_running', 'deploying', 'health_checking', 'running'];
const ENDED = new Set(['terminated']);
const FINISHED_RUN = new Set(['succeeded', 'failed', 'timed_out', 'cancelled']);

export async function servicePage(main, id, app, signal) {
  const base = `/api/v1/modserv/${sid(id)}`;
  const m = {
    svc: null, steps: [], runs: new Map(), logs: [], logKeys: new Set(), events: [], eventKeys: new Set(),
    live: 'connecting',
  };

  // --- the page skeleton: rendered once, its parts refreshed in place (open <details> stay open)
  const title = h('h1', {}, id);
  const summary = h('dl', { class: 'facts' });
  const failure = h('div', { class: 'failure', id: 'failure', hidden: true });
  const stepper = h('ol', { class: 'stepper', id: 'stepper', 'aria-label': 'Lifecycle' });
  const liveNote = h('p', { class: 'hint', id: 'live-mode', 'aria-live': 'polite' });
  const actions = h('section', { class: 'actions-bar', 'aria-label': 'Actions' });
  const said = h('p', { class: 'said', role: 'status', 'aria-live': 'polite', id: 'action-result' });
  const attempts = h('tbody');
  const stateRows = h('tbody');
  const pipeLog = h('ol', { class: 'log', id: 'pipeline-log-lines' });
  const runtimeLog = h('pre', { class: 'log', id: 'runtime-log-lines' }, 'Open to read the model server\'s output.');
  const pipeDetails = h('details', { id: 'pipeline-log' }, h('summary', {}, 'Pipeline log'), pipeLog);
  const runtimeDetails = h('details', { id: 'runtime-log' }, h('summary', {}, 'Runtime log (the model server\'s own output)'),
    runtimeLog);

  fill(main,
    h('p', { class: 'crumbs' }, h('a', { href: '#/' }, '← All services')),
    title, summary, liveNote, actions, said,
    h('h2', {}, 'Lifecycle'), stepper, failure,
    h('h2', {}, 'Step attempts'),
    h('div', { class: 'scroll' }, h('table', { class: 'grid', id: 'attempts' },
      h('thead', {}, h('tr', {}, ['Step', 'Attempt', 'Status', 'Started', 'Duration', 'Operator', 'Parameters']
        .map((c) => h('th', { scope: 'col' }, c)))), attempts)),
    h('h2', {}, 'State changes'),
    h('div', { class: 'scroll' }, h('table', { class: 'grid', id: 'state-changes' },
      h('thead', {}, h('tr', {}, ['Time', 'From', 'To', 'Reason', 'Operator'].map((c) => h('th', { scope: 'col' }, c)))),
      stateRows)),
    h('h2', {}, 'Logs'), pipeDetails, runtimeDetails);

  // --- the model
  function addRun(r) {
    const key = `${r.step}#${r.attempt}`;
    const old = m.runs.get(key);
    if (old && FINISHED_RUN.has(old.status) && !FINISHED_RUN.has(r.status)) return; // an older message
    m.runs.set(key, { ...old, ...r });
  }
  function addLog(x) {
    const key = `${x.ts}|${x.step}|${x.attempt}|${x.message}`;
    if (m.logKeys.has(key)) return false;
    m.logKeys.add(key);
    m.logs.push(x);
    return true;
  }
  function addEvent(e) {
    const key = `${e.ts}|${e.to}`;
    if (m.eventKeys.has(key)) return;
    m.eventKeys.add(key);
    m.events.push(e);
    m.events.sort((a, b) => a.ts.localeCompare(b.ts));
  }
  function stepStatus(name) {
    const runs = [...m.runs.values()].filter((r) => r.step === name).sort((a, b) => a.attempt - b.attempt);
    if (runs.length) return { status: runs[runs.length - 1].status, runs };
    const known = m.steps.find((s) => s.name === name);
    return { status: known?.status || 'pending', runs };
  }

  async function loadAll() {
    const [svc, pipe, logs, events] = await Promise.all([
      get(base, { signal }), get(`${base}/pipeline`, { signal }), get(`${base}/pipeline/logs`, { signal }),
      get(`${base}/events`, { signal }),
    ]);
    m.svc = svc.data;
    m.steps = pipe.data.steps;
    for (const s of pipe.data.steps) for (const r of s.runs) addRun(r);
    for (const r of logs.data.runs) addRun(r);
    for (const x of logs.data.logs) addLog(x);
    for (const e of events.data) addEvent(e);
  }

  // --- rendering
  function renderSummary() {
    const s = m.svc;
    title.replaceChildren(s.modelName, ' ', badge(s.state));
    const row = (k, ...v) => [h('dt', {}, k), h('dd', {}, ...v)];
    fill(summary,
      row('Service', h('code', {}, s.serviceId)),
      row('State', STATE_WORDS[s.state] || s.state, s.reason ? ` — ${s.reason}` : ''),
      row('Endpoint', s.endpoint ? h('code', { id: 'endpoint' }, `${s.endpoint}/v1`) : 'not yet'),
      row('Replicas', h('span', { id: 'replicas' }, `${s.replicas.ready} of ${s.replicas.desired} ready`)),
      row('Shimlet', s.shimlet), row('Pipeline', s.pipeline),
      row('Model file', h('code', {}, s.spec?.modelFile || s.spec?.modelSource || '')),
      row('Deployed by', s.operator), row('Age', `${age(s.createdAt)} (since ${new Date(s.createdAt).toLocaleString()})`));
  }

  function failedStage() {
    const last = [...m.events].reverse().find((e) => e.to === 'failed');
    if (last && LIFECYCLE.includes(last.from)) return last.from;
    const step = m.steps.find((x) => x.name === m.svc.currentStep);
    return step?.phase && LIFECYCLE.includes(step.phase) ? step.phase : 'pipeline_running';
  }

  function stageStatuses() {
    const state = m.svc.state;
    const reached = new Set(m.events.map((e) => e.to));
    const out = {};
    if (LIFECYCLE.includes(state)) {
      const at = LIFECYCLE.indexOf(state);
      LIFECYCLE.forEach((st, i) => { out[st] = i < at ? 'done' : i === at ? 'current' : 'pending'; });
    } else if (state === 'failed') {
      const at = LIFECYCLE.indexOf(failedStage());
      LIFECYCLE.forEach((st, i) => { out[st] = i < at ? 'done' : i === at ? 'failed' : 'pending'; });
    } else if (state === 'degraded') {
      LIFECYCLE.forEach((st) => { out[st] = 'done'; });
      out.running = 'degraded';
    } else { // terminating, terminated: what it went through
      LIFECYCLE.forEach((st) => { out[st] = reached.has(st) ? 'done' : 'skipped'; });
    }
    return out;
  }

  function renderStepper() {
    const statuses = stageStatuses();
    const items = LIFECYCLE.map((st, i) => {
      const status = statuses[st];
      const subs = m.svc.totalSteps.filter((name) => (m.steps.find((x) => x.name === name)?.phase || 'pipeline_running') === st);
      const mark = { done: '✓', failed: '✕', degraded: '!' }[status]
        || (st === 'running' && status === 'current' ? '✓' : String(i + 1));
      return h('li', {
        class: `stage ${status}`, dataset: { state: st, status },
        'aria-current': status === 'current' || status === 'failed' ? 'step' : null,
      },
      h('span', { class: 'dot', 'aria-hidden': 'true' }, mark),
      h('span', { class: 'label' }, STATE_WORDS[st], h('span', { class: 'sr' }, ` (${status})`)),
      subs.length ? h('ul', { class: 'substeps' }, subs.map((name) => {
        const { status: ss, runs } = stepStatus(name);
        const last = runs[runs.length - 1];
        const took = runs.reduce((t, r) => t + (r.durationMs || 0), 0);
        return h('li', { class: `substep ${ss}`, dataset: { step: name, status: ss } },
          h('span', { class: 'name' }, name),
          h('span', { class: 'how' }, STATUS_WORDS[ss] || ss,
            runs.length > 1 ? `, ${runs.length} attempts` : '', took ? `, ${duration(took)}` : ''),
          (ss === 'failed' || ss === 'timed_out') && last?.error ? h('span', { class: 'why' }, last.error) : null);
      })) : null);
    });
    const state = m.svc.state;
    if (!LIFECYCLE.includes(state)) {
      items.push(h('li', { class: `stage end ${state}`, dataset: { state, status: 'current' }, 'aria-current': 'step' },
        h('span', { class: 'dot', 'aria-hidden': 'true' }, state === 'failed' ? '✕' : '•'),
        h('span', { class: 'label' }, STATE_WORDS[state] || state)));
    }
    fill(stepper, items);

    if (state === 'failed' || state === 'degraded') {
      const step = state === 'failed' ? m.svc.currentStep : null;
      failure.hidden = false;
      failure.className = state === 'failed' ? 'failure' : 'failure warn';
      fill(failure,
        h('strong', {}, state === 'failed' ? `Failed${step ? ` at step ${step}` : ''}` : 'Degraded'),
        h('p', { class: 'reason', id: 'failure-reason' }, m.svc.reason || 'no reason was recorded'));
    } else {
      failure.hidden = true;
    }
  }

  function renderAttempts() {
    const runs = [...m.runs.values()].sort((a, b) => a.startedAt.localeCompare(b.startedAt));
    fill(attempts, runs.map((r) => h('tr', { class: `run ${r.status}`, dataset: { step: r.step, attempt: r.attempt } },
      h('td', {}, r.step), h('td', {}, String(r.attempt)),
      h('td', {}, h('span', { class: `status ${r.status}` }, STATUS_WORDS[r.status] || r.status),
        r.error ? h('div', { class: 'why' }, r.error) : null),
      h('td', {}, clock(r.startedAt)), h('td', { class: 'num' }, duration(r.durationMs)),
      h('td', {}, r.operator || ''),
      h('td', {}, r.params && Object.keys(r.params).length
        ? h('details', {}, h('summary', {}, Object.keys(r.params).join(', ')), h('pre', {}, json(r.params))) : ''))));
  }

  function renderStates() {
    fill(stateRows, m.events.map((e) => h('tr', {},
      h('td', {}, clock(e.ts)), h('td', {}, e.from ? STATE_WORDS[e.from] || e.from : '—'),
      h('td', {}, badge(e.to)), h('td', {}, e.reason || ''), h('td', {}, e.operator || ''))));
  }

  function logLine(x) {
    return h('li', { class: `line ${x.level}` }, h('time', {}, clock(x.ts)), ' ',
      h('span', { class: 'step' }, `${x.step}#${x.attempt}`), ' ',
      x.level !== 'info' ? h('span', { class: 'level' }, `${x.level} `) : null, x.message);
  }

  function renderLogs() {
    fill(pipeLog, m.logs.length ? m.logs.map(logLine) : h('li', {}, 'No log lines yet.'));
  }

  function renderActions() {
    const s = m.svc;
    if (!app.may('operator')) {
      fill(actions, h('p', { class: 'hint', id: 'read-only' },
        `You can read this service; scaling, retrying and deleting need the operator role (you are ${app.roleText()}).`));
      return;
    }
    const scaleInput = h('input', { id: 'scale-count', type: 'number', min: 1, max: 64, value: String(s.replicas.desired) });
    const canScale = ['running', 'degraded'].includes(s.state);
    fill(actions,
      h('form', { class: 'inline', onsubmit: (ev) => { ev.preventDefault(); act('scale', () => post(`${base}/scale`, { replicaCount: Number(scaleInput.value) })); } },
        h('label', { for: 'scale-count' }, 'Replicas'), scaleInput,
        h('button', { type: 'submit', id: 'scale', disabled: !canScale }, 'Scale')),
      h('button', { type: 'button', id: 'retry', disabled: s.state !== 'failed',
        onclick: () => act('retry', () => post(`${base}/retry`)) }, 'Retry from the failed step'),
      h('button', { type: 'button', id: 'delete', class: 'danger', disabled: ['terminating', 'terminated'].includes(s.state),
        onclick: () => {
          if (window.confirm(`Delete ${s.modelName} (${s.serviceId})? Its model server is stopped.`)) act('delete', () => del(base));
        } }, 'Delete'));
  }

  let busy = false;
  async function act(what, call) {
    if (busy) return;
    busy = true;
    said.className = 'said';
    said.textContent = { scale: 'Scaling…', retry: 'Retrying…', delete: 'Deleting…' }[what];
    try {
      const r = await call();
      said.textContent = r.message;
      if (what === 'retry') startFollowing(); // the stream of a failed service may have ended
      await refresh();
    } catch (e) {
      said.className = 'said error';
      said.textContent = e.message;
      if (e instanceof ApiError && e.status === 403) app.forbidden(e.message);
    } finally {
      busy = false;
    }
  }

  function renderAll() {
    if (!m.svc) return;
    renderSummary(); renderStepper(); renderAttempts(); renderStates(); renderLogs(); renderActions();
    liveNote.textContent = {
      stream: 'Live: following the server\'s event stream.',
      poll: 'Live: this server has no event stream; asking it every second.',
      connecting: 'Connecting…',
      ended: 'The service is deleted: nothing more will change.',
    }[m.live];
    document.title = `${m.svc.modelName} — ${STATE_WORDS[m.svc.state] || m.svc.state} — ModelServeShim`;
  }

  let refreshing = null;
  async function refresh() {
    if (refreshing) return refreshing;
    refreshing = (async () => {
      try {
        const s = await get(base, { signal });
        m.svc = s.data;
        renderAll();
      } catch (e) {
        if (!signal.aborted) said.textContent = e.message;
      }
    })().finally(() => { refreshing = null; });
    return refreshing;
  }

  // --- runtime log: read while open
  async function runtimeLoop() {
    while (!signal.aborted && runtimeDetails.open) {
      try {
        const r = await get(`${base}/logs?tail=200`, { signal });
        const atEnd = runtimeLog.scrollTop + runtimeLog.clientHeight >= runtimeLog.scrollHeight - 4;
        runtimeLog.textContent = r.data.lines.length ? r.data.lines.join('\n') : 'No output yet.';
        if (atEnd) runtimeLog.scrollTop = runtimeLog.scrollHeight; // keep following the tail
        runtimeLog.classList.remove('error');
      } catch (e) {
        if (signal.aborted) return;
        runtimeLog.textContent = e.message;
        runtimeLog.classList.add('error');
      }
      if (m.svc && ENDED.has(m.svc.state)) return;
      await sleep(2000, signal);
    }
  }
  runtimeDetails.addEventListener('toggle', () => { if (runtimeDetails.open) runtimeLoop(); });

  // --- live updates
  let pending = null;
  function soon() { // many messages in a burst: draw once
    if (pending) return;
    pending = setTimeout(() => { pending = null; renderAll(); }, 50);
  }

  function onEvent(type, d) {
    if (!d || typeof d !== 'object') return;
    if (type === 'state') {
      addEvent({ ts: d.ts, from: d.from, to: d.to, reason: d.reason, operator: d.operator });
      if (m.svc) { m.svc.state = d.to; m.svc.reason = d.reason; }
      soon();
      refresh(); // the endpoint, the current step, the replicas
    } else if (type === 'step') {
      addRun(d);
      soon();
    } else if (type === 'log') {
      if (addLog(d)) soon();
    } else if (type === 'replica') {
      if (m.svc) m.svc.replicas = { ready: d.ready, desired: d.desired };
      soon();
    }
  }

  async function poll() {
    m.live = 'poll';
    renderAll();
    while (!signal.aborted) {
      await sleep(1000, signal);
      if (signal.aborted) return;
      try {
        const before = m.svc.state;
        await loadAll();
        renderAll();
        if (ENDED.has(m.svc.state) && before === m.svc.state) { m.live = 'ended'; renderAll(); return; }
      } catch (e) {
        if (signal.aborted) return;
        said.textContent = e.message;
      }
    }
  }

  let following = false;
  async function startFollowing() {
    if (following) return;
    following = true;
    try {
      const how = await follow(`${base}/events`, {
        signal, onEvent,
        onOpen: () => { // what happened between the first read and the stream's start
          m.live = 'stream';
          loadAll().then(soon, () => {});
        },
        isDone: () => ENDED.has(m.svc?.state),
      });
      if (how === 'json') await poll();
      else if (ENDED.has(m.svc?.state)) { m.live = 'ended'; await refresh(); }
    } finally {
      following = false;
    }
  }

  try {
    await loadAll();
  } catch (e) {
    if (signal.aborted) return;
    fill(main, h('p', { class: 'crumbs' }, h('a', { href: '#/' }, '← All services')), h('h1', {}, id),
      h('p', { class: 'error', role: 'alert' }, e.message));
    return;
  }
  renderAll();
  if (ENDED.has(m.svc.state)) { m.live = 'ended'; renderAll(); return; }
  startFollowing();
}
