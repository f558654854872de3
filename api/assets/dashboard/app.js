// The Stratus dashboard: one page, no build step, no library. It reads the same /v1 routes
// as the CLI, with the token the user signs in with, and follows GET /v1/events (NDJSON:
// EventSource cannot send an Authorization header). Each event re-reads only what it
// touches; nothing is polled. When the stream breaks, a banner says so and the page
// reconnects with backoff, resuming after the last index it saw.

const TOKEN_KEY = 'stratus.token';
// The node sends a heartbeat after 15 s of silence: three missed means it is gone.
const SILENCE_MS = 45_000;
// Events close together (a rollout) cost one re-read, not one each.
const COALESCE_MS = 150;
const FEED_LINES = 100;
const LOG_LINES = 500;
const MAX_BACKOFF_MS = 30_000;

const $ = (selector) => document.querySelector(selector);

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  who: null,
  selfId: null,
  nodes: [],
  // name -> { summary: AppSummary, view: AppView | null }
  apps: new Map(),
  selected: null,
  releases: null,
  lastIndex: null,
  feed: [],
  // Grows at every sign-in and sign-out: loops of an older one stop.
  epoch: 0,
  lost: false,
  streamAbort: null,
  logAbort: null,
  pending: new Map(),
};

class HttpError extends Error {
  constructor(status, body) {
    super(body && body.detail ? body.detail : `HTTP ${status}`);
    this.status = status;
    this.code = body && body.error;
  }
}

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'data') Object.assign(el.dataset, value);
    else if (key === 'text') el.textContent = value;
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function backoff(attempt) {
  const base = Math.min(MAX_BACKOFF_MS, 1000 * 2 ** Math.max(0, attempt - 1));
  return Math.round(base * (0.75 + Math.random() * 0.5));
}

function authHeaders(accept) {
  return { Authorization: `Bearer ${state.token}`, Accept: accept };
}

async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // Not the API's JSON error (a proxy, a dying node): the status says enough.
  }
  return new HttpError(response.status, body);
}

// A JSON call; a 429 waits as long as the API asks, a few times.
async function api(path, { method = 'GET', body } = {}) {
  for (let attempt = 0; ; attempt++) {
    const init = { method, headers: authHeaders('application/json'), cache: 'no-store' };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    if (response.status === 429 && attempt < 3) {
      const wait = Number(response.headers.get('Retry-After')) || 1;
      await sleep(wait * 1000);
      continue;
    }
    if (response.status === 401) {
      signOut('The node refused the token: sign in again.');
    }
    if (!response.ok) throw await errorOf(response);
    return response.json();
  }
}

async function* lines(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let newline;
    while ((newline = buffer.indexOf('\n')) >= 0) {
      yield buffer.slice(0, newline);
      buffer = buffer.slice(newline + 1);
    }
  }
  if (buffer) yield buffer;
}

async function* ndjson(response) {
  for await (const line of lines(response)) {
    if (line.trim()) yield JSON.parse(line);
  }
}

// "...then follow from since=42" in a 410 or a `gone` line.
function sinceFrom(text) {
  const match = /since=(\d+)/.exec(text || '');
  return match ? Number(match[1]) : null;
}

// ---- sign-in ---------------------------------------------------------------------------

async function signIn(token) {
  state.token = token;
  const who = await api('/v1/whoami');
  sessionStorage.setItem(TOKEN_KEY, token);
  state.who = who;
  $('#sign-in').hidden = true;
  $('#dashboard').hidden = false;
  $('#sign-out').hidden = false;
  $('#who').textContent = who.admin
    ? 'cluster administrator'
    : `tenant ${who.tenant || '?'} · ${who.role}${who.token_name ? ` · ${who.token_name}` : ''}`;
  const epoch = ++state.epoch;
  follow(epoch);
}

function signOut(message) {
  state.epoch++;
  state.token = null;
  state.who = null;
  sessionStorage.removeItem(TOKEN_KEY);
  state.streamAbort?.abort();
  stopLogs();
  state.apps.clear();
  state.nodes = [];
  state.selected = null;
  setBanner(null);
  $('#dashboard').hidden = true;
  $('#sign-out').hidden = true;
  $('#who').textContent = '';
  $('#answering').textContent = '';
  $('#sign-in').hidden = false;
  const error = $('#sign-in-error');
  error.textContent = message || '';
  error.hidden = !message;
}

function canDeploy() {
  const who = state.who;
  return Boolean(who && (who.admin || who.role === 'deploy' || who.role === 'admin'));
}

// ---- the event stream ------------------------------------------------------------------

function setBanner(text, kind = 'error') {
  const banner = $('#banner');
  banner.hidden = !text;
  banner.textContent = text || '';
  banner.className = kind === 'info' ? 'info' : '';
}

function nodeName() {
  return state.selfId || location.host;
}

// Reads the kept events (the feed's backlog), then the state they lead to; the stream
// then follows from the newest of them, so nothing between is missed.
async function syncAll() {
  const response = await fetch('/v1/events?follow=false', {
    headers: authHeaders('application/x-ndjson'),
    cache: 'no-store',
  });
  if (!response.ok) throw await errorOf(response);
  const backlog = [];
  for await (const line of ndjson(response)) {
    if (typeof line.index === 'number') backlog.push(line);
  }
  state.lastIndex = backlog.length ? backlog[backlog.length - 1].index : null;
  state.feed = backlog.slice(-FEED_LINES);
  renderFeed();
  await Promise.all([reloadNodes(), reloadAppList()]);
  if (state.selected) await reloadApp(state.selected);
  selectFromHash();
}

async function follow(epoch) {
  let attempt = 0;
  let needSync = true;
  while (epoch === state.epoch) {
    const abort = new AbortController();
    state.streamAbort = abort;
    let watchdog = null;
    const pet = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => abort.abort(new Error('no heartbeat for 45 s')), SILENCE_MS);
    };
    try {
      if (needSync) {
        await syncAll();
        needSync = false;
      }
      pet();
      const since = state.lastIndex === null ? '' : `&since=${state.lastIndex}`;
      const response = await fetch(`/v1/events?follow=true${since}`, {
        headers: authHeaders('application/x-ndjson'),
        signal: abort.signal,
        cache: 'no-store',
      });
      if (response.status === 410) {
        // The node restarted, or we fell a whole buffer behind: start again from its state.
        needSync = true;
        continue;
      }
      if (response.status === 401) {
        signOut('The node refused the token: sign in again.');
        return;
      }
      if (!response.ok) throw await errorOf(response);
      if (state.lost) {
        state.lost = false;
        setBanner(null);
        $('#dashboard').classList.remove('stale');
        // Missed events are replayed from `since`, but a node may have come back new.
        needSync = true;
        abort.abort();
        continue;
      }
      attempt = 0;
      $('#events-state').textContent = `following ${nodeName()}`;
      let gone = false;
      for await (const line of ndjson(response)) {
        pet();
        if (epoch !== state.epoch) return;
        if (typeof line.gone === 'string') {
          gone = true;
          break;
        }
        if (typeof line.index === 'number') onEvent(line);
      }
      if (gone) {
        needSync = true;
        continue;
      }
      throw new Error('the node closed the stream');
    } catch (err) {
      if (epoch !== state.epoch) return;
      attempt++;
      const delay = backoff(attempt);
      const why = abort.signal.aborted && abort.signal.reason instanceof Error
        ? abort.signal.reason.message
        : err.message || String(err);
      state.lost = true;
      $('#dashboard').classList.add('stale');
      $('#events-state').textContent = 'disconnected';
      setBanner(`Lost node ${nodeName()} (${why}), retrying in ${Math.ceil(delay / 1000)} s…`);
      await sleep(delay);
      if (epoch === state.epoch) setBanner(`Lost node ${nodeName()} (${why}), retrying now…`);
    } finally {
      clearTimeout(watchdog);
    }
  }
}

function schedule(key, work) {
  if (state.pending.has(key)) return;
  const epoch = state.epoch;
  state.pending.set(key, setTimeout(async () => {
    state.pending.delete(key);
    if (epoch !== state.epoch) return;
    try {
      await work();
    } catch (err) {
      // The stream's own failure handling reports a lost node; a failed re-read of one
      // thing only says so in the console.
      console.warn(`re-reading ${key}:`, err);
    }
  }, COALESCE_MS));
}

function onEvent(event) {
  state.lastIndex = event.index;
  state.feed.push(event);
  if (state.feed.length > FEED_LINES) state.feed.splice(0, state.feed.length - FEED_LINES);
  renderFeed();
  const app = event.app || (event.replica && event.replica.app);
  switch (event.topic) {
    case 'node':
      schedule('nodes', reloadNodes);
      break;
    case 'replica':
      // A replica placed or stopped changes its node's reservations too.
      schedule('nodes', reloadNodes);
      schedule('apps', reloadAppList);
      if (app) schedule(`app:${app}`, () => reloadApp(app));
      break;
    case 'app':
    case 'build':
      schedule('apps', reloadAppList);
      if (app) schedule(`app:${app}`, () => reloadApp(app));
      if (event.kind === 'app.release_live' && app === state.selected) tailLogs(app);
      break;
    default:
      break;
  }
}

// ---- reads -----------------------------------------------------------------------------

async function reloadNodes() {
  const answer = await api('/v1/nodes');
  state.selfId = answer.self_id;
  state.nodes = answer.nodes.slice().sort((a, b) => a.node_id.localeCompare(b.node_id));
  $('#answering').textContent = `via ${answer.self_id}`;
  renderNodes();
}

async function reloadAppList() {
  const answer = await api('/v1/apps');
  const names = new Set(answer.apps.map((app) => app.name));
  for (const name of [...state.apps.keys()]) {
    if (!names.has(name)) state.apps.delete(name);
  }
  const fresh = [];
  for (const summary of answer.apps) {
    const known = state.apps.get(summary.name);
    if (known) known.summary = summary;
    else {
      state.apps.set(summary.name, { summary, view: null });
      fresh.push(summary.name);
    }
  }
  renderApps();
  await Promise.all(fresh.map((name) => reloadApp(name)));
}

async function reloadApp(name) {
  let view;
  try {
    view = await api(`/v1/apps/${encodeURIComponent(name)}`);
  } catch (err) {
    if (err.status === 404) {
      state.apps.delete(name);
      renderApps();
      if (state.selected === name) renderDetail();
      return;
    }
    throw err;
  }
  const entry = state.apps.get(name);
  if (entry) entry.view = view;
  else state.apps.set(name, { summary: summaryOf(view), view });
  renderApps();
  if (state.selected === name) {
    renderDetail();
    const releases = await api(`/v1/apps/${encodeURIComponent(name)}/releases`);
    if (state.selected === name) {
      state.releases = releases.releases;
      renderReleases();
    }
  }
}

function summaryOf(view) {
  const release = view.release ? view.release.number : null;
  const healthy = view.replicas.filter((r) => r.release === release && r.state === 'running'
    && r.health === 'healthy').length;
  return { name: view.name, release, replicas_desired: view.replicas_desired, replicas_healthy: healthy };
}

// ---- rendering -------------------------------------------------------------------------

function bytes(n) {
  if (!Number.isFinite(n)) return '?';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n >= 10 || i === 0 ? Math.round(n) : n.toFixed(1)} ${units[i]}`;
}

function pct(part, whole) {
  return whole > 0 ? Math.max(0, Math.min(100, (100 * part) / whole)) : 0;
}

function meter(label, kind, usedPct, reservedPct, text, title) {
  const used = h('span', { class: 'used' });
  used.style.width = `${usedPct}%`;
  const bar = h('div', { class: `bar ${kind}`, title }, used);
  if (reservedPct !== null) {
    const reserved = h('span', { class: 'reserved' });
    reserved.style.width = `${reservedPct}%`;
    bar.append(reserved);
  }
  return h('div', { class: 'meter', data: { meter: kind, used: usedPct.toFixed(1) } },
    h('span', { text: label }), bar, h('span', { class: 'value', text }));
}

function renderNodes() {
  const cards = state.nodes.map((node) => {
    const load = node.load;
    const status = node.status;
    const title = h('div', { class: 'title' },
      h('strong', { text: node.node_id }),
      node.node_id === state.selfId ? h('span', { class: 'badge', text: 'this node' }) : null,
      h('span', { class: `badge ${status}`, data: { role: 'status' }, text: status }),
      node.draining ? h('span', { class: 'badge draining', text: 'draining' }) : null);
    const body = [title];
    if (load) {
      const cpuReserved = pct(load.reserved_cpu_millis, load.cpu_cores * 1000);
      const memUsed = load.mem_total_bytes - load.mem_available_bytes;
      body.push(meter('CPU', 'cpu', pct(load.cpu_usage_pct, 100), cpuReserved,
        `${Math.round(load.cpu_usage_pct)}% of ${load.cpu_cores}`,
        `reserved ${(load.reserved_cpu_millis / 1000).toFixed(2)} of ${load.cpu_cores} cores`));
      body.push(meter('Memory', 'mem', pct(memUsed, load.mem_total_bytes),
        pct(load.reserved_mem_bytes, load.mem_total_bytes),
        `${bytes(memUsed)} / ${bytes(load.mem_total_bytes)}`,
        `reserved ${bytes(load.reserved_mem_bytes)}`));
      body.push(h('div', { class: 'muted mono' },
        `reserved ${(load.reserved_cpu_millis / 1000).toFixed(2)} cores, ${bytes(load.reserved_mem_bytes)}`
        + ` · ${node.containers} replica${node.containers === 1 ? '' : 's'}`));
    } else {
      body.push(h('div', { class: 'muted', text: 'no load reported yet' }));
    }
    const labels = node.identity ? Object.entries(node.identity.labels || {}) : [];
    if (labels.length) {
      body.push(h('div', { class: 'labels' },
        labels.map(([key, value]) => h('span', { class: 'label', text: `${key}=${value}` }))));
    }
    return h('article', {
      class: 'node',
      data: { node: node.node_id, status, draining: String(Boolean(node.draining)) },
    }, body);
  });
  $('#nodes').replaceChildren(...cards);
  const live = state.nodes.filter((node) => node.status === 'live').length;
  $('#node-count').textContent = `${live} of ${state.nodes.length} live`;
}

function builderOf(view) {
  const release = view && view.release;
  if (!release) return '';
  return release.image ? release.image.builder : 'image';
}

function renderApps() {
  const rows = [...state.apps.values()]
    .sort((a, b) => a.summary.name.localeCompare(b.summary.name))
    .map(({ summary, view }) => {
      const domains = view && view.release ? view.release.manifest.domains || [] : [];
      const ok = summary.replicas_healthy >= summary.replicas_desired;
      const row = h('tr', {
        class: summary.name === state.selected ? 'selected' : null,
        data: {
          app: summary.name,
          release: summary.release ?? '',
          healthy: summary.replicas_healthy,
          desired: summary.replicas_desired,
        },
      },
      h('td', {}, h('a', { href: `#app=${encodeURIComponent(summary.name)}`, text: summary.name })),
      h('td', { text: summary.release ?? '–' }),
      h('td', {}, h('span', {
        class: `badge ${ok ? 'healthy' : 'unhealthy'}`,
        text: `${summary.replicas_healthy}/${summary.replicas_desired}`,
      })),
      h('td', { text: builderOf(view) }),
      h('td', { class: 'wrap', text: domains.join(', ') }));
      row.addEventListener('click', (event) => {
        if (event.target.tagName !== 'A') location.hash = `app=${encodeURIComponent(summary.name)}`;
      });
      return row;
    });
  $('#apps tbody').replaceChildren(...rows);
  $('#no-apps').hidden = rows.length > 0;
}

function renderDetail() {
  const name = state.selected;
  const entry = name && state.apps.get(name);
  const section = $('#app-detail');
  if (!entry) {
    section.hidden = true;
    return;
  }
  section.hidden = false;
  const view = entry.view;
  $('#app-name').textContent = name;
  $('#app-state').textContent = view && view.release
    ? `release ${view.release.number} · ${entry.summary.replicas_healthy}/${entry.summary.replicas_desired} healthy`
    : 'no release';
  $('#app-actions').hidden = !canDeploy();
  const scaleTo = $('#scale-to');
  if (document.activeElement !== scaleTo) scaleTo.value = entry.summary.replicas_desired;
  const failure = $('#app-failure');
  failure.hidden = !(view && view.failure);
  failure.textContent = view && view.failure ? view.failure : '';
  const replicas = (view ? view.replicas : [])
    .slice()
    .sort((a, b) => b.release - a.release || a.replica - b.replica)
    .map((replica) => h('tr', {
      data: { replica: `${replica.release}-${replica.replica}`, node: replica.node_id, state: replica.state, health: replica.health },
    },
    h('td', { text: replica.replica }),
    h('td', { text: replica.release }),
    h('td', { text: replica.node_id }),
    h('td', {}, h('span', { class: `badge ${replica.state}`, text: replica.state })),
    h('td', {}, h('span', { class: `badge ${replica.health}`, text: replica.health })),
    h('td', { class: 'wrap muted', text: replica.detail || '' })));
  $('#replicas tbody').replaceChildren(...replicas);
}

function renderReleases() {
  const rows = (state.releases || []).map((release) => h('tr', {
    data: { release: release.number, status: release.status },
  },
  h('td', { text: release.number }),
  h('td', {}, h('span', { class: `badge ${release.status}`, text: release.status })),
  h('td', { text: new Date(release.created_at_ms).toLocaleString() }),
  h('td', { class: 'wrap', text: release.note || '' }),
  h('td', { class: 'wrap error', text: release.failure || '' })));
  $('#releases tbody').replaceChildren(...rows);
}

const GOOD = new Set(['node.live', 'node.joined', 'node.undrained', 'app.release_live',
  'replica.healthy', 'replica.restarted']);
const BAD = new Set(['node.dead', 'app.release_failed', 'app.rolled_back', 'replica.unhealthy',
  'replica.crashed']);

function factsOf(event) {
  const r = event.replica;
  switch (event.kind) {
    case 'app.deploy_accepted':
      return `release ${event.release}${event.note ? ` (${event.note})` : ''}`;
    case 'app.rollout_progress':
      return `release ${event.release}: ${event.healthy}/${event.desired} healthy`;
    case 'app.release_live':
      return `release ${event.release} is live`;
    case 'app.release_failed':
      return `release ${event.release}: ${event.reason}`;
    case 'app.rolled_back':
      return `from ${event.from} to ${event.to}`;
    case 'app.scaled':
      return `${event.from} → ${event.to} replicas`;
    case 'build.started':
      return `${event.builder} on ${event.node}`;
    case 'build.finished':
      return `release ${event.release}, ${event.builder} on ${event.node}, ${(event.duration_ms / 1000).toFixed(1)} s${event.error ? `: ${event.error}` : ''}`;
    case 'ingress.routes_changed':
      return `${event.backends} backends`;
    default:
      if (r) return `release ${r.release}, replica ${r.replica} on ${r.node}${event.reason ? `: ${event.reason}` : ''}`;
      if (event.generation !== undefined) return `generation ${event.generation}`;
      return '';
  }
}

function renderFeed() {
  const items = state.feed.slice().reverse().map((event) => {
    const kindClass = GOOD.has(event.kind) ? 'good' : BAD.has(event.kind) ? 'bad' : '';
    const release = event.release ?? (event.replica ? event.replica.release : undefined);
    return h('li', { data: { kind: event.kind, index: event.index, subject: event.subject, release: release ?? '' } },
      h('time', { datetime: new Date(event.at_ms).toISOString(), text: new Date(event.at_ms).toLocaleTimeString([], { hour12: false }) }),
      h('span', {}, h('span', { class: `kind ${kindClass}`, text: event.kind }), ' ', h('span', { class: 'mono', text: event.subject })),
      h('span', { class: 'facts', text: factsOf(event) }));
  });
  $('#events').replaceChildren(...items);
}

// ---- one app: selection, logs, actions -------------------------------------------------

function selectFromHash() {
  const match = /^#app=(.+)$/.exec(location.hash);
  const name = match ? decodeURIComponent(match[1]) : null;
  if (name === state.selected) return;
  state.selected = name;
  state.releases = null;
  renderApps();
  renderReleases();
  $('#action-result').textContent = '';
  if (!name) {
    stopLogs();
    renderDetail();
    return;
  }
  renderDetail();
  reloadApp(name).catch((err) => console.warn(`reading ${name}:`, err));
  tailLogs(name);
}

function stopLogs() {
  state.logAbort?.abort();
  state.logAbort = null;
}

async function tailLogs(name) {
  stopLogs();
  const abort = new AbortController();
  state.logAbort = abort;
  const pre = $('#logs');
  let attempt = 0;
  while (!abort.signal.aborted && state.selected === name) {
    try {
      const response = await fetch(`/v1/apps/${encodeURIComponent(name)}/logs?follow=true&tail=50`, {
        headers: authHeaders('text/plain'),
        signal: abort.signal,
        cache: 'no-store',
      });
      if (!response.ok) throw await errorOf(response);
      pre.textContent = '';
      $('#log-state').textContent = 'following';
      for await (const line of lines(response)) {
        attempt = 0;
        const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
        pre.append(`${line}\n`);
        while (pre.childNodes.length > LOG_LINES) pre.firstChild.remove();
        if (atBottom) pre.scrollTop = pre.scrollHeight;
      }
      throw new Error('the log stream ended');
    } catch (err) {
      if (abort.signal.aborted) return;
      attempt++;
      const delay = backoff(attempt);
      $('#log-state').textContent = `stopped (${err.message}), again in ${Math.ceil(delay / 1000)} s`;
      await sleep(delay);
    }
  }
}

async function act(label, path, body) {
  const result = $('#action-result');
  const buttons = [$('#scale'), $('#rollback')];
  buttons.forEach((button) => { button.disabled = true; });
  result.textContent = `${label}…`;
  try {
    const accepted = await api(path, { method: 'POST', body });
    result.textContent = accepted.message || `${label}: release ${accepted.release}`;
  } catch (err) {
    result.textContent = `${label} refused: ${err.message}`;
  } finally {
    buttons.forEach((button) => { button.disabled = false; });
  }
}

// ---- wiring ----------------------------------------------------------------------------

function wire() {
  $('#sign-in-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const token = $('#token').value.trim();
    if (!token) return;
    const error = $('#sign-in-error');
    error.hidden = true;
    try {
      await signIn(token);
      $('#token').value = '';
    } catch (err) {
      signOut(err.status === 401 ? 'The node refused this token.' : `Cannot sign in: ${err.message}`);
    }
  });
  $('#sign-out').addEventListener('click', () => signOut(null));
  window.addEventListener('hashchange', selectFromHash);
  $('#scale').addEventListener('click', () => {
    const replicas = Number($('#scale-to').value);
    if (!Number.isInteger(replicas) || replicas < 0) {
      $('#action-result').textContent = 'replicas must be a whole number';
      return;
    }
    act('scale', `/v1/apps/${encodeURIComponent(state.selected)}/scale`, { replicas });
  });
  $('#rollback').addEventListener('click', () => {
    act('rollback', `/v1/apps/${encodeURIComponent(state.selected)}/rollback`, {});
  });
}

wire();
if (state.token) {
  signIn(state.token).catch((err) => {
    signOut(err.status === 401 ? 'The node refused the saved token: sign in again.' : `Cannot sign in: ${err.message}`);
  });
} else {
  signOut(null);
}
