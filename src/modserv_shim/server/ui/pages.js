// The list of services, the deploy form (with its dry-run preview) and the plugins page.

import { ApiError, get, post } from './api.js';
import { STATE_WORDS, age, badge, duration, fill, h, json, sleep } from './dom.js';
import { follow } from './stream.js';

// ---------------------------------------------------------------- services

export async function listPage(main, app, signal) {
  const hide = h('input', { type: 'checkbox', id: 'hide-deleted', checked: true });
  const body = h('tbody');
  const note = h('p', { class: 'hint', id: 'list-live', 'aria-live': 'polite' });
  const table = h('table', { class: 'grid', id: 'services' },
    h('thead', {}, h('tr', {}, ['Model', 'State', 'Shimlet', 'Pipeline', 'Replicas', 'Age', 'Endpoint']
      .map((c) => h('th', { scope: 'col' }, c)))), body);
  fill(main, h('div', { class: 'title-row' }, h('h1', {}, 'Services'),
    app.may('operator') ? h('a', { class: 'button', href: '#/deploy' }, 'Deploy a model') : null),
  h('p', {}, h('label', {}, hide, ' Hide deleted services')), h('div', { class: 'scroll' }, table), note);

  let services = [];
  function render() {
    const shown = services.filter((s) => !(hide.checked && s.state === 'terminated'));
    fill(body, shown.length ? shown.map((s) => h('tr', { dataset: { service: s.serviceId, state: s.state } },
      h('td', {}, h('a', { href: `#/service/${encodeURIComponent(s.serviceId)}` }, s.modelName),
        h('div', { class: 'sub' }, s.serviceId)),
      h('td', {}, badge(s.state), s.reason && s.state !== 'running' ? h('div', { class: 'sub why' }, s.reason) : null),
      h('td', {}, s.shimlet), h('td', {}, s.pipeline),
      h('td', { class: 'num' }, `${s.replicas.ready}/${s.replicas.desired}`),
      h('td', {}, age(s.createdAt)),
      h('td', {}, s.endpoint ? h('code', {}, `${s.endpoint}/v1`) : '—')))
      : h('tr', {}, h('td', { colspan: 7 }, services.length ? 'Only deleted services.' : 'No services yet.')));
  }
  hide.addEventListener('change', render);

  async function load() {
    services = (await get('/api/v1/modserv', { signal })).data.reverse(); // newest first
    render();
  }
  try { await load(); } catch (e) {
    if (!signal.aborted) fill(note, h('span', { class: 'error', role: 'alert' }, e.message));
    return;
  }

  let timer = null;
  const reload = () => { // a burst of messages: read the list once
    if (timer) return;
    timer = setTimeout(() => { timer = null; load().catch(() => {}); }, 200);
  };
  const how = await follow('/api/v1/events', {
    signal, onEvent: reload, onOpen: () => { note.textContent = 'Live: following the server\'s event stream.'; },
  });
  if (how === 'json') {
    note.textContent = 'This server has no event stream for all services: the list is read every 2 seconds.';
    while (!signal.aborted) {
      await sleep(2000, signal);
      if (!signal.aborted) await load().catch(() => {});
    }
  }
}

// ---------------------------------------------------------------- deploy

export async function deployPage(main, app, signal) {
  if (!app.may('operator')) {
    fill(main, h('h1', {}, 'Deploy a model'),
      h('p', { class: 'hint', id: 'read-only' }, `Deploying needs the operator role; you are ${app.roleText()}.`));
    return;
  }
  let plugins = { shimlets: [], pipelines: [] };
  try { plugins = (await get('/api/v1/plugins', { signal })).data; } catch (e) { if (signal.aborted) return; }

  const field = (id, label, input, hint) => h('div', { class: 'field' },
    h('label', { for: id }, label), input, hint ? h('p', { class: 'hint', id: `${id}-hint` }, hint) : null,
    h('p', { class: 'field-error', id: `${id}-error`, hidden: true }));
  const text = (id, attrs = {}) => h('input', { id, name: id, type: 'text', 'aria-describedby': `${id}-hint`, ...attrs });
  const choice = (id, items) => h('select', { id, name: id }, h('option', { value: '' }, 'the server\'s default'),
    items.filter((p) => p.loaded).map((p) => h('option', { value: p.name }, p.name + (p.default ? ' (default)' : ''))));

  const form = h('form', { id: 'deploy-form', novalidate: true },
    h('fieldset', {}, h('legend', {}, 'Model'),
      field('modelName', 'Model name', text('modelName', { required: true, placeholder: 'smollm2-135m', autocomplete: 'off' }),
        'Lowercase letters, digits and -; it is also the model name the endpoint serves.'),
      field('modelFile', 'Model file or folder', text('modelFile', { required: true, placeholder: '/models/model.gguf' }),
        'The absolute path as the model server sees it: a .gguf file or a Hugging Face folder.'),
      field('runtime', 'Runtime', h('select', { id: 'runtime', name: 'runtime' },
        ['auto', 'llama.cpp', 'vllm', 'sglang'].map((r) => h('option', { value: r }, r === 'auto' ? 'auto (llama.cpp for GGUF, vLLM for a folder)' : r)))),
      field('contextLength', 'Context length (tokens)', text('contextLength', { inputmode: 'numeric', placeholder: 'the model\'s, at most 8192' }))),
    h('fieldset', {}, h('legend', {}, 'Where and how'),
      field('shimlet', 'Shimlet (environment)', choice('shimlet', plugins.shimlets)),
      field('pipeline', 'Pipeline (deploy flow)', choice('pipeline', plugins.pipelines)),
      field('replicaCount', 'Replicas', h('input', { id: 'replicaCount', name: 'replicaCount', type: 'number', min: 1, max: 64, value: '1' }))),
    h('fieldset', {}, h('legend', {}, 'Resources'),
      field('cpu', 'CPU', text('cpu', { value: '2', placeholder: '4 or 500m' })),
      field('memory', 'Memory', text('memory', { value: '2Gi', placeholder: '16Gi' }), 'Checked against what the model needs before anything starts.'),
      field('acceleratorType', 'Accelerator type', text('acceleratorType', { placeholder: 'none (CPU); e.g. NVIDIA L4' })),
      field('acceleratorCount', 'Accelerators', h('input', { id: 'acceleratorCount', name: 'acceleratorCount', type: 'number', min: 0, max: 16, value: '0' }))),
    h('details', {}, h('summary', {}, 'More options'),
      field('runtimeArgs', 'Extra runtime arguments', text('runtimeArgs', { placeholder: '--n_threads 2' }),
        'Separated by spaces; each must be on the runtime\'s allowlist.')),
    h('div', { class: 'buttons' },
      h('button', { type: 'button', id: 'preview', class: 'secondary' }, 'Preview (dry run)'),
      h('button', { type: 'submit', id: 'deploy' }, 'Deploy')));
  const result = h('div', { id: 'deploy-result', 'aria-live': 'polite' });
  fill(main, h('h1', {}, 'Deploy a model'), form, result);

  const val = (id) => form.querySelector(`#${id}`).value.trim();
  function body(dryRun) {
    const res = { cpu: val('cpu'), memory: val('memory') };
    if (val('acceleratorType')) res.acceleratorType = val('acceleratorType');
    if (Number(val('acceleratorCount'))) res.acceleratorCount = Number(val('acceleratorCount'));
    for (const k of Object.keys(res)) if (res[k] === '') delete res[k];
    const out = { modelName: val('modelName'), modelFile: val('modelFile'), resourceRequirements: res,
      replicaCount: Number(val('replicaCount') || 1), runtime: val('runtime') };
    if (val('shimlet')) out.shimlet = val('shimlet');
    if (val('pipeline')) out.pipeline = val('pipeline');
    if (val('contextLength')) out.contextLength = Number(val('contextLength'));
    if (val('runtimeArgs')) out.runtimeArgs = val('runtimeArgs').split(/\s+/);
    if (dryRun) out.dryRun = true;
    return out;
  }
  function showError(e) {
    form.querySelectorAll('.field-error').forEach((p) => { p.hidden = true; p.textContent = ''; });
    form.querySelectorAll('[aria-invalid]').forEach((el) => el.removeAttribute('aria-invalid'));
    for (const d of Array.isArray(e.details) ? e.details : []) {
      const top = String(d.field || '').replace(/\[.*$/, '').split('.').pop(); // resourceRequirements.memory: memory
      const p = form.querySelector(`#${CSS.escape(top)}-error`);
      if (p) { p.hidden = false; p.textContent = d.problem; form.querySelector(`#${CSS.escape(top)}`)?.setAttribute('aria-invalid', 'true'); }
    }
    fill(result, h('div', { class: 'failure', role: 'alert', id: 'deploy-error' }, h('strong', {}, 'Not deployed'),
      h('p', { class: 'reason' }, e.message)));
  }

  let busy = false;
  async function send(dryRun) {
    if (busy) return;
    busy = true;
    fill(result, h('p', {}, dryRun ? 'Rendering…' : 'Deploying…'));
    try {
      const r = await post('/api/v1/modserv/deploy', body(dryRun), { signal });
      if (dryRun) fill(result, preview(r.data));
      else location.hash = `#/service/${encodeURIComponent(r.data.serviceId)}`;
    } catch (e) {
      if (!signal.aborted) showError(e);
      if (e instanceof ApiError && e.status === 403) app.forbidden(e.message);
    } finally {
      busy = false;
    }
  }
  form.addEventListener('submit', (ev) => { ev.preventDefault(); send(false); });
  form.querySelector('#preview').addEventListener('click', () => send(true));
}

function preview(d) {
  const r = d.rendered || {};
  const cmd = r.workload?.command || (r.launch ? [...(r.launch.local_command || []), ...(r.launch.args || [])] : null);
  return h('section', { id: 'dry-run', class: 'card' },
    h('h2', {}, 'Dry run: nothing was deployed'),
    h('p', {}, `Steps: ${d.totalSteps.join(' → ')}`),
    h('ul', { class: 'plain' }, d.stepsRun.map((s) => h('li', { class: `substep ${s.status}` },
      h('span', { class: 'name' }, s.step), ` ${s.status} in ${duration(s.durationMs)}`,
      s.error ? h('span', { class: 'why' }, s.error) : null))),
    r.fit?.message ? h('p', { id: 'dry-run-fit' }, h('strong', {}, 'Memory: '), r.fit.message) : null,
    cmd ? [h('h3', {}, 'Command line'), h('pre', { id: 'dry-run-command' }, cmd.join(' '))] : null,
    d.logs.length ? [h('h3', {}, 'Log'), h('ol', { class: 'log' }, d.logs.map((x) => h('li', {}, h('span', { class: 'step' }, x.step), ' ', x.message)))] : null,
    h('details', {}, h('summary', {}, 'Everything rendered (manifests, launch, model)'), h('pre', { id: 'dry-run-rendered' }, json(r))));
}

// ---------------------------------------------------------------- plugins

export async function pluginsPage(main, app, signal) {
  fill(main, h('h1', {}, 'Plugins'), h('p', {}, 'Loading…'));
  let data;
  try { data = (await get('/api/v1/plugins', { signal })).data; } catch (e) {
    if (!signal.aborted) fill(main, h('h1', {}, 'Plugins'), h('p', { class: 'error', role: 'alert' }, e.message));
    return;
  }
  const status = (p) => p.loaded ? h('span', { class: 'status succeeded' }, p.default ? 'loaded, default' : 'loaded')
    : h('span', { class: 'status failed' }, 'not loaded');
  fill(main, h('h1', {}, 'Plugins'),
    h('p', { class: 'hint' }, 'Shimlets adapt an environment; pipelines define the deploy flow. An admin loads more with POST /api/v1/plugins/load.'),
    h('h2', {}, 'Shimlets'),
    h('div', { class: 'scroll' }, h('table', { class: 'grid', id: 'shimlets' },
      h('thead', {}, h('tr', {}, ['Name', 'Source', 'Status', 'Capabilities'].map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, data.shimlets.map((p) => h('tr', { dataset: { plugin: p.name } },
        h('td', {}, p.name), h('td', {}, p.source), h('td', {}, status(p), p.error ? h('div', { class: 'why' }, p.error) : null),
        h('td', {}, (p.capabilities || []).join(', ') || '—')))))),
    h('h2', {}, 'Pipelines'),
    h('div', { class: 'scroll' }, h('table', { class: 'grid', id: 'pipelines' },
      h('thead', {}, h('tr', {}, ['Name', 'Source', 'Status', 'Steps (state, timeout, attempts)'].map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, data.pipelines.map((p) => h('tr', { dataset: { plugin: p.name } },
        h('td', {}, p.name), h('td', {}, p.source), h('td', {}, status(p), p.error ? h('div', { class: 'why' }, p.error) : null),
        h('td', {}, h('ol', { class: 'plain' }, (p.steps || []).map((s) => h('li', {}, h('strong', {}, s.name),
          ` — ${STATE_WORDS[s.phase] || s.phase}, ${s.timeout} s, ${s.retry?.attempts ?? 1} attempt(s)`))))))))),
    data.refused.length ? [h('h2', {}, 'Refused'), h('ul', {}, data.refused.map((r) => h('li', {},
      h('strong', {}, `${r.kind} ${r.name}`), ` (${r.source}): ${r.error}`)))] : null);
}
