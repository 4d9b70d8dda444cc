// Portico's web UI: a small client of the documented API (docs/api.md), nothing else. The
// token lives in localStorage and goes in the `auth-token` header; never in a URL or a cookie.
// Every value from the server reaches the page as text (no HTML is built from data).
'use strict';

const TOKEN = 'portico.token';
const main = () => document.getElementById('main');
let me = null;
let live = null;

// ---------- helpers ----------

/** An element: h('tr', {class: 'x', onclick: fn}, child, 'text', ...). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (value === true) el.setAttribute(key, '');
    else el.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function notice(text) {
  if (!text) return;
  const line = h('p', {}, text);
  document.getElementById('notice').append(line);
  setTimeout(() => line.remove(), 4000);
}

function when(ms) {
  if (!ms) return '—';
  return new Date(Number(ms)).toISOString().replace('T', ' ').slice(0, 16) + ' UTC';
}

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

/** What this page changed lately (key → when): the live event of one's own change is not
 * announced again (the action said it already). */
const own = new Map();
const OWN_FOR = 10000;

/** Notes the keys a change is about, before it is sent (its event may come before its
 * answer), and again from the answer (keys only the server knew, such as a new id). */
function noteOwn(path, body, data) {
  const now = Date.now();
  for (const [key, at] of own) if (now - at > OWN_FOR) own.delete(key);
  const keys = path.split('?')[0].split('/').slice(1).map((part) => decodeURIComponent(part));
  for (const field of ['host', 'name', 'username', 'id']) {
    if (body && typeof body[field] === 'string') keys.push(body[field]);
    if (data && data.results && typeof data.results[field] === 'string') keys.push(data.results[field]);
  }
  for (const key of keys) own.set(key, now);
}

async function api(method, path, body) {
  const headers = { 'auth-token': localStorage.getItem(TOKEN) || '' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  const changing = method !== 'GET' && method !== 'OPTIONS';
  if (changing) noteOwn(path, body, null);
  const res = await fetch('/api/' + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (res.status === 401 && path !== 'auth/login') {
    signedOut();
    throw new ApiError(401, data);
  }
  if (!res.ok) throw new ApiError(res.status, data);
  if (changing) noteOwn(path, body, data);
  return data;
}

const enc = (s) => encodeURIComponent(s);

/** Form fields named otherwise than the API's fields. */
const FIELD_OF = { basicAuth: 'users', rateLimit: 'perSecond', healthCheck: 'checkPath' };

/** Shows an API error on a form: per-field messages where the API names the field. */
function showErrors(form, error) {
  form.querySelectorAll('.field-error, .form-error').forEach((e) => e.remove());
  const keys = (error.body && error.body.keys) || [];
  for (const { key, message } of keys) {
    const input = form.querySelector(`[name="${CSS.escape(FIELD_OF[key] || key)}"]`);
    if (input) {
      input.setAttribute('aria-invalid', 'true');
      input.closest('label').append(h('span', { class: 'field-error', role: 'alert' }, message));
    } else {
      form.append(h('p', { class: 'form-error error', role: 'alert' }, message));
    }
  }
  if (!keys.length) form.append(h('p', { class: 'form-error error', role: 'alert' }, error.message));
}

function clearErrors(form) {
  form.querySelectorAll('.field-error, .form-error').forEach((e) => e.remove());
  form.querySelectorAll('[aria-invalid]').forEach((e) => e.removeAttribute('aria-invalid'));
}

/** Runs `action` with the form's data when it is submitted; an API error shows on the form. */
function onSubmit(form, action) {
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    try {
      await action(new FormData(form));
    } catch (error) {
      showErrors(form, error);
    }
  });
}

function field(label, name, attrs) {
  return h('label', {}, label, h('input', { name, ...attrs }));
}

function check(label, name, checked) {
  return h('label', { class: 'check' }, h('input', { type: 'checkbox', name, checked }), label);
}

/** Each page's title, by its name in the address (`#/certs`). */
const TITLES = { overview: 'Overview', hosts: 'Hosts', streams: 'Streams', certs: 'Certificates', tester: 'Pattern tester', dns: 'DNS providers', users: 'Users', tokens: 'API tokens', audit: 'Audit log', account: 'Account' };

function page(title, ...content) {
  // A page that finished loading after the user went on to another one is not shown over it.
  if (Object.values(TITLES).includes(title) && TITLES[currentPage()] !== title) return;
  document.title = `${title} · Portico`;
  main().replaceChildren(h('h1', { tabindex: '-1' }, title), ...content.filter(Boolean));
}

// ---------- sign in and out ----------

function signInPage(message) {
  document.getElementById('bar').hidden = true;
  document.title = 'Sign in · Portico';
  const form = h('form', { 'aria-label': 'Sign in' },
    field('User name', 'username', { autocomplete: 'username', required: true }),
    field('Password', 'password', { type: 'password', autocomplete: 'current-password', required: true }),
    h('button', { class: 'primary', type: 'submit' }, 'Sign in'));
  onSubmit(form, async (f) => {
    const answer = await api('POST', 'auth/login', Object.fromEntries(f));
    localStorage.setItem(TOKEN, answer.token);
    await start();
  });
  main().replaceChildren(h('section', { class: 'card signin' }, h('h1', {}, 'Sign in to Portico'),
    message ? h('p', { class: 'muted' }, message) : null, form));
  form.querySelector('input').focus();
}

function signedOut(message) {
  localStorage.removeItem(TOKEN);
  me = null;
  if (live) live.abort();
  live = null;
  signInPage(message || 'Your session ended. Sign in again.');
}

async function signOut() {
  try { await api('POST', 'auth/logout'); } catch { /* the token is gone either way */ }
  signedOut('Signed out.');
}

// ---------- live updates: server-sent events read with fetch (the token in a header) ----------

function follow() {
  if (live) live.abort();
  live = new AbortController();
  const signal = live.signal;
  (async () => {
    while (!signal.aborted) {
      try {
        // Low priority: the stream never ends, and is no part of loading the page.
        const res = await fetch('/api/events', { headers: { 'auth-token': localStorage.getItem(TOKEN) || '' }, signal, priority: 'low' });
        if (res.status === 401) return signedOut();
        // Whether live changes are coming (tests wait on it too).
        document.body.dataset.live = res.ok ? 'connected' : 'reconnecting';
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        let text = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          text += decoder.decode(value, { stream: true });
          let end;
          while ((end = text.indexOf('\n\n')) >= 0) {
            const block = text.slice(0, end);
            text = text.slice(end + 2);
            const line = block.split('\n').find((l) => l.startsWith('data: '));
            if (line) changed(JSON.parse(line.slice(6)));
          }
        }
      } catch (error) {
        if (signal.aborted) return;
      }
      document.body.dataset.live = 'reconnecting';
      await new Promise((r) => setTimeout(r, 2000));
    }
  })();
}

/** The pages that show what the events are about, redrawn when something changes. */
const LIVE = new Set(['overview', 'hosts', 'certs', 'dns', 'audit']);
let refreshTimer = null;
let eventsSeen = 0;
function changed(event) {
  // How many live events the page has taken in (tests wait on it).
  document.body.dataset.events = String(++eventsSeen);
  const [, model, action, key] = (event.topic || '').split(':');
  const mine = key && own.has(key) && Date.now() - own.get(key) < OWN_FOR;
  // A certificate's steps are shown by the page, not each in a toast.
  if (model && key && !mine && model !== 'Cert') notice(`${model} ${key} ${action === 'remove' ? 'removed' : action + 'd'}`);
  if (!LIVE.has(currentPage()) && event.topic !== 'resync') return;
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => route(true), 150);
}

// ---------- pages ----------

/** The certificate that covers `name` among `certs` (`GET /api/cert`): its own, or the
 * wildcard one of its parent; undefined when it has none yet. */
function certOf(name, certs) {
  const parent = name.includes('.') ? name.slice(name.indexOf('.') + 1) : '';
  return certs.find((c) => c.host === name) || (parent.includes('.') ? certs.find((c) => c.host === `*.${parent}`) : undefined);
}

async function overviewPage() {
  const [hosts, unique] = await hostsAndCerts();
  const users = me.role === 'admin' ? (await api('GET', 'user')).results.length : null;
  const expiring = unique.filter((c) => c.not_after).sort((a, b) => a.not_after - b.not_after).slice(0, 10);
  const failing = unique.filter((c) => c.failures > 0);
  const soon = unique.filter((c) => c.status === 'valid' && c.not_after - Date.now() < SOON_DAYS * 86400000).length;
  const valid = unique.filter((c) => c.status === 'valid').length;
  const offline = hosts.flatMap((x) => (x.targets || []).filter((t) => online(t) === 'offline').map((t) => ({ host: x.host, target: t })));
  const count = (n, label, tone) => h('div', { class: `stat ${tone || ''}` }, h('span', { class: 'number' }, n), h('span', { class: 'muted' }, label));
  const rate = h('p', { id: 'request-rate' }, '…');
  const charts = h('div', { class: 'charts' });
  page('Overview',
    h('section', { class: 'card', 'aria-label': 'Counts' }, h('div', { class: 'stats' },
      count(hosts.length, hosts.length === 1 ? 'host' : 'hosts'),
      count(valid, 'certificates valid', 'ok'),
      count(soon, `expiring within ${SOON_DAYS} days`, soon ? 'warn' : ''),
      count(unique.length - valid, 'certificates failing or expired', unique.length - valid ? 'bad' : ''),
      count(offline.length, offline.length === 1 ? 'target offline' : 'targets offline', offline.length ? 'bad' : ''),
      users === null ? null : count(users, users === 1 ? 'user' : 'users'))),
    h('section', { class: 'card', 'aria-labelledby': 'traffic' }, h('h2', { id: 'traffic' }, 'Traffic on this node, last minutes'), rate, charts),
    h('section', { class: 'card', 'aria-labelledby': 'exp' }, h('h2', { id: 'exp' }, 'Certificates expiring soonest'),
      expiring.length ? h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Name'), h('th', {}, 'Expires'), h('th', {}, 'Issuer'))),
        h('tbody', {}, expiring.map((c) => h('tr', {}, h('td', {}, c.host), h('td', {}, when(c.not_after)), h('td', {}, c.issued_by || c.issuer || '—')))))
        : h('p', { class: 'muted' }, 'No certificates yet.')),
    h('section', { class: 'card', 'aria-labelledby': 'fail' }, h('h2', { id: 'fail' }, 'Failing renewals'),
      failing.length ? h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Name'), h('th', {}, 'Failures'), h('th', {}, 'Last error'), h('th', {}, 'Next attempt'))),
        h('tbody', {}, failing.map((c) => h('tr', {}, h('td', {}, c.host), h('td', {}, c.failures), h('td', { class: 'error' }, c.last_error || '—'), h('td', {}, when(c.next_attempt))))))
        : h('p', { class: 'muted' }, 'None.')),
    h('section', { class: 'card', 'aria-labelledby': 'down' }, h('h2', { id: 'down' }, 'Targets offline'),
      offline.length ? h('ul', { class: 'targets' }, offline.map(({ host, target }) =>
        h('li', {}, `${host}: ${target.ip}:${target.port} `, h('span', { class: 'badge bad' }, target.health), target.last_error ? h('span', { class: 'muted' }, ` ${target.last_error}`) : null)))
        : h('p', { class: 'muted' }, 'None.')));
  watchTraffic(rate, charts);
}

/** A small line chart of `values` (oldest first), labelled for screen readers by `label`. */
function sparkline(values, label) {
  const NS = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(NS, 'svg');
  const [width, height] = [240, 48];
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', label);
  svg.setAttribute('class', 'spark');
  const top = Math.max(...values, 1e-9);
  const step = values.length > 1 ? width / (values.length - 1) : width;
  const line = document.createElementNS(NS, 'polyline');
  line.setAttribute('points', values.map((v, i) => `${(i * step).toFixed(1)},${(height - 2 - (v / top) * (height - 4)).toFixed(1)}`).join(' '));
  svg.append(line);
  return svg;
}

/** The bound (ms) under which a share `q` of the requests counted in `buckets` finished. */
function percentile(buckets, q) {
  const total = buckets.reduce((sum, b) => sum + b.count, 0);
  if (!total) return null;
  let seen = 0;
  for (const b of buckets) {
    seen += b.count;
    if (seen >= q * total) return b.le_ms;
  }
  return null;
}

const ms = (bound) => (bound === null ? '> 10 s' : `≤ ${bound} ms`);

/** Samples `GET /api/stats` every 2 s while the overview shows: this node's request rate,
 * error rate and latency over the last five minutes (kept while the page is open). A redraw
 * of the overview (a live change) draws the samples kept at once, not after the next one. */
let rateTimer = null;
const traffic = [];
function watchTraffic(into, charts) {
  clearTimeout(rateTimer);
  drawTraffic(into, charts);
  const sample = async () => {
    if (!into.isConnected) return;
    try {
      const now = (await api('GET', 'stats')).results;
      if (now.requests_total === null) {
        into.textContent = 'Request rate: turn on metrics (metrics.listen) on the node that serves this page to see it.';
        return;
      }
      const last = traffic[traffic.length - 1];
      if (last && (now.started !== last.started || now.requests_total < last.requests_total)) traffic.length = 0;
      traffic.push(now);
      while (traffic.length > 150) traffic.shift();
      drawTraffic(into, charts);
    } catch { /* shown again at the next sample */ } finally {
      rateTimer = setTimeout(sample, 2000);
    }
  };
  sample();
}

/** Draws the samples kept (`traffic`) into the rate line `into` and the `charts`. */
function drawTraffic(into, charts) {
  const now = traffic[traffic.length - 1];
  if (!now) return;
  const intervals = traffic.slice(1).map((s, i) => {
    const before = traffic[i];
    const seconds = Math.max(1, s.at - before.at) / 1000;
    const answered = s.requests_total - before.requests_total;
    const errors = s.statuses['5xx'] - before.statuses['5xx'];
    const buckets = s.latency.map((b, j) => ({ le_ms: b.le_ms, count: b.count - before.latency[j].count }));
    return { rate: answered / seconds, errors: answered ? errors / answered : 0, p50: percentile(buckets, 0.5), p99: percentile(buckets, 0.99), answered };
  });
  const latest = intervals[intervals.length - 1];
  into.textContent = `${now.requests_total} request${now.requests_total === 1 ? '' : 's'} answered by this node since it started` +
    (latest ? `; ${latest.rate.toFixed(1)} requests/s now.` : '.');
  if (!intervals.length) return;
  // Latency over the whole window kept, from the buckets' growth.
  const first = traffic[0];
  const window = now.latency.map((b, j) => ({ le_ms: b.le_ms, count: b.count - first.latency[j].count }));
  const [p50, p99] = [percentile(window, 0.5), percentile(window, 0.99)];
  const answered = now.requests_total - first.requests_total;
  const failed = now.statuses['5xx'] - first.statuses['5xx'];
  const minutes = ((now.at - first.at) / 60000).toFixed(1);
  const chart = (title, value, values, label) => h('figure', { class: 'chart' },
    h('figcaption', {}, title, ' ', h('strong', {}, value)), sparkline(values, label));
  charts.replaceChildren(
    chart('Requests per second', latest.rate.toFixed(1), intervals.map((i) => i.rate), `Requests per second over ${minutes} minutes`),
    chart('Errors (5xx)', `${answered ? ((100 * failed) / answered).toFixed(1) : '0.0'} %`, intervals.map((i) => i.errors), `Share of 5xx answers over ${minutes} minutes`),
    chart('Latency', answered ? `p50 ${ms(p50)}, p99 ${ms(p99)}` : 'no requests', intervals.map((i) => i.p99 || 0), `99th percentile latency over ${minutes} minutes`));
}

/** The non-empty lines of a textarea's text, trimmed. */
function textLines(text) {
  return (text || '').split('\n').map((l) => l.trim()).filter(Boolean);
}

/** `ip:port` or `ip:port@weight` per line, as the API's `targets` entries. */
function parseTargets(text) {
  return textLines(text).map((line) => {
    const [address, weight] = line.split('@');
    const at = address.lastIndexOf(':');
    const ip = address.slice(0, at).replace(/^\[|\]$/g, '');
    return { ip, port: Number(address.slice(at + 1)), weight: weight ? Number(weight) : 1 };
  });
}

/** The access-control part of the host form: who may reach the host. */
function accessFields(host) {
  const a = host || {};
  const lines = (list) => (list || []).join('\n');
  return h('details', { class: 'access', open: Boolean(a.basicAuth || a.allow || a.deny || a.rateLimit || a.forwardAuth) },
    h('summary', {}, 'Access control'),
    h('div', { class: 'grid' },
      h('label', {}, 'Users (user:password per line; a user alone keeps its password)',
        h('textarea', { name: 'users', rows: 2, autocomplete: 'off' }, (a.basicAuth || []).map((u) => u.username).join('\n'))),
      h('label', {}, 'Allowed addresses (one per line, 10.0.0.0/8)', h('textarea', { name: 'allow', rows: 2 }, lines(a.allow))),
      h('label', {}, 'Denied addresses', h('textarea', { name: 'deny', rows: 2 }, lines(a.deny))),
      field('Requests per second per client', 'perSecond', { type: 'number', min: 0.01, step: 'any', value: a.rateLimit ? a.rateLimit.perSecond : '' }),
      field('Burst', 'burst', { type: 'number', min: 1, value: a.rateLimit ? a.rateLimit.burst : '' }),
      field('Forward auth URL', 'forwardAuth', { type: 'url', placeholder: 'http://127.0.0.1:9091/api/verify', value: a.forwardAuth ? a.forwardAuth.url : '' }),
      field('Headers to copy from it (comma-separated)', 'copyHeaders', { value: a.forwardAuth ? a.forwardAuth.copyHeaders.join(', ') : '' })));
}

/** The API fields the access-control part of the form says (only what changed or is set). */
function accessBody(f, host) {
  const a = host || {};
  const out = {};
  const list = (name) => textLines(f.get(name));
  const users = list('users').map((line) => {
    const at = line.indexOf(':');
    return at < 0 ? { username: line } : { username: line.slice(0, at), password: line.slice(at + 1) };
  });
  if (users.length || a.basicAuth) out.basicAuth = users;
  for (const name of ['allow', 'deny']) {
    if (list(name).length || a[name]) out[name] = list(name);
  }
  const perSecond = f.get('perSecond');
  if (perSecond) out.rateLimit = { perSecond: Number(perSecond), ...(f.get('burst') ? { burst: Number(f.get('burst')) } : {}) };
  else if (a.rateLimit) out.rateLimit = null;
  const url = (f.get('forwardAuth') || '').trim();
  if (url) out.forwardAuth = { url, copyHeaders: (f.get('copyHeaders') || '').split(',').map((h) => h.trim()).filter(Boolean) };
  else if (a.forwardAuth) out.forwardAuth = null;
  return out;
}

/** The health-check part of the host form: what the node asks each target, and how often. */
function healthFields(host) {
  const c = (host && host.healthCheck) || null;
  return h('details', { class: 'access', open: Boolean(c) },
    h('summary', {}, 'Health checks'),
    h('div', { class: 'grid' },
      field('Path to check (empty: no checks)', 'checkPath', { value: c ? c.path : '', placeholder: '/healthz' }),
      field('Every (5s, 1m)', 'checkInterval', { value: c ? c.interval : '5s' }),
      field('Healthy answer status', 'checkExpect', { type: 'number', min: 100, max: 599, value: c ? c.expect : 200 }),
      field('Failures before a target is down', 'checkUnhealthy', { type: 'number', min: 1, value: c ? c.unhealthy : 3 }),
      field('Passes before it is up again', 'checkHealthy', { type: 'number', min: 1, value: c ? c.healthy : 2 })));
}

/** The API's `healthCheck` from the form: set, removed (`null`), or left out. */
function healthBody(f, host) {
  const path = (f.get('checkPath') || '').trim();
  if (!path) return host && host.healthCheck ? { healthCheck: null } : {};
  const number = (name, fallback) => Number(f.get(name) || fallback);
  return { healthCheck: { path, interval: (f.get('checkInterval') || '5s').trim(), expect: number('checkExpect', 200),
    unhealthy: number('checkUnhealthy', 3), healthy: number('checkHealthy', 2) } };
}

/** Header rules as lines: `Name: value` sets, `+Name: value` adds, `-Name` removes. */
function rulesText(ops) {
  if (!ops) return '';
  return [...Object.entries(ops.set || {}).map(([n, v]) => `${n}: ${v}`), ...Object.entries(ops.add || {}).map(([n, v]) => `+${n}: ${v}`),
    ...(ops.remove || []).map((n) => `-${n}`)].join('\n');
}

/** The API's `{set, add, remove}` from lines as `rulesText` writes them. */
function parseRules(text) {
  const ops = { set: {}, add: {}, remove: [] };
  for (const line of textLines(text)) {
    if (line.startsWith('-')) { ops.remove.push(line.slice(1).trim()); continue; }
    const adding = line.startsWith('+');
    const rest = adding ? line.slice(1) : line;
    const at = rest.indexOf(':');
    if (at < 0) { ops.remove.push(rest.trim()); continue; }
    (adding ? ops.add : ops.set)[rest.slice(0, at).trim()] = rest.slice(at + 1).trim();
  }
  return ops;
}

/** What the host answers with: forwarding (the targets above), a redirect, a static answer,
 * or its TLS connections forwarded unterminated (passthrough). */
function kindFields(host) {
  const kind = (host && host.kind) || 'proxy';
  const r = (host && host.redirect) || {};
  const a = (host && host.static) || {};
  const select = h('select', { name: 'kind' }, [['proxy', 'Forward to targets (proxy)'], ['redirect', 'Redirect'], ['static', 'A fixed answer (static)'], ['passthrough', 'TLS passthrough (forwarded unterminated by SNI)']]
    .map(([value, label]) => h('option', { value, selected: kind === value }, label)));
  const pass = h('div', { class: 'grid', 'data-kind': 'passthrough' },
    h('p', { class: 'muted wide-field' }, 'Connections for these names go to the targets as they are: the targets hold the certificates, and only the allowed and denied addresses apply.'),
    check('Send a PROXY protocol header to the target', 'passProxyProtocol', Boolean(host && host.passthrough && host.passthrough.proxyProtocol)));
  const redirect = h('div', { class: 'grid', 'data-kind': 'redirect' },
    field('Redirect to (URL or host name)', 'redirectUrl', { value: r.url || '', placeholder: 'https://new.example.com' }),
    h('label', {}, 'Redirect status', h('select', { name: 'redirectCode' }, [301, 302, 307, 308].map((c) => h('option', { value: c, selected: (r.code || 301) === c }, String(c))))),
    check('Keep the path and query', 'keepPath', r.keepPath !== false));
  const answer = h('div', { class: 'grid', 'data-kind': 'static' },
    field('Answer status', 'staticStatus', { type: 'number', min: 200, max: 599, value: a.status || 200 }),
    field('Content type', 'staticType', { value: a.contentType || 'text/html; charset=utf-8' }),
    h('label', { class: 'wide-field' }, 'Body', h('textarea', { name: 'staticBody', rows: 3 }, a.body || '')));
  return { select, redirect, answer, pass };
}

/** Headers, HSTS and the error page: how the host's answers are dressed. */
function dressFields(host) {
  const x = host || {};
  const hsts = x.hsts || null;
  return h('details', { class: 'access', open: Boolean(x.headers || x.hsts || x.errorPages || x.compress) },
    h('summary', {}, 'Headers, HSTS, compression and error page'),
    h('div', { class: 'grid' },
      check('Compress answers (zstd, brotli, gzip) for clients that accept it', 'compress', Boolean(x.compress)),
      h('label', {}, 'Request headers to the targets (Name: value sets, +Name: value adds, -Name removes; {client_ip}, {request_id}, {host}, {scheme})',
        h('textarea', { name: 'requestHeaders', rows: 2 }, rulesText(x.headers && x.headers.request))),
      h('label', {}, 'Response headers (the same)', h('textarea', { name: 'responseHeaders', rows: 2 }, rulesText(x.headers && x.headers.response))),
      check('HSTS (Strict-Transport-Security on HTTPS)', 'hsts', Boolean(hsts)),
      field('HSTS max-age (seconds)', 'hstsMaxAge', { type: 'number', min: 0, value: hsts ? hsts.maxAge : 31536000 }),
      check('HSTS includeSubDomains', 'hstsSub', Boolean(hsts && hsts.includeSubDomains)),
      check('HSTS preload', 'hstsPreload', Boolean(hsts && hsts.preload)),
      h('label', {}, 'Error page for Portico\'s own errors (HTML; {status} and {request_id} replaced; empty: the default)',
        h('textarea', { name: 'errorPage', rows: 2 }, (x.errorPages && x.errorPages.default) || ''))));
}

/** The API fields of the kind and dress parts of the form (only what is set or changed). */
function kindBody(f, host) {
  const x = host || {};
  const out = { kind: f.get('kind'), compress: f.has('compress') };
  if (out.kind === 'redirect') out.redirect = { url: f.get('redirectUrl'), code: Number(f.get('redirectCode')), keepPath: f.has('keepPath') };
  if (out.kind === 'static') out.static = { status: Number(f.get('staticStatus')), contentType: f.get('staticType'), body: f.get('staticBody') || '' };
  if (out.kind === 'passthrough') out.passthrough = { proxyProtocol: f.has('passProxyProtocol') };
  const request = parseRules(f.get('requestHeaders') || '');
  const response = parseRules(f.get('responseHeaders') || '');
  const none = (ops) => !Object.keys(ops.set).length && !Object.keys(ops.add).length && !ops.remove.length;
  if (!none(request) || !none(response)) out.headers = { request, response };
  else if (x.headers) out.headers = null;
  if (f.has('hsts')) out.hsts = { maxAge: Number(f.get('hstsMaxAge')), includeSubDomains: f.has('hstsSub'), preload: f.has('hstsPreload') };
  else if (x.hsts) out.hsts = null;
  const page = (f.get('errorPage') || '').trim();
  const others = Object.fromEntries(Object.entries(x.errorPages || {}).filter(([k]) => k !== 'default'));
  if (page) out.errorPages = { ...others, default: page };
  else if (x.errorPages && x.errorPages.default) out.errorPages = Object.keys(others).length ? others : null;
  return out;
}

function hostForm(host, done) {
  const editing = Boolean(host);
  const others = host && host.targets ? host.targets.slice(1) : [];
  const balance = h('select', { name: 'balance' },
    [['round_robin', 'In turn (round robin)'], ['least_conn', 'Least busy'], ['ip_hash', 'Same client, same target'], ['first', 'First that is up (standbys)']]
      .map(([value, label]) => h('option', { value, selected: host && host.balance === value }, label)));
  const kinds = kindFields(host);
  const targetFields = h('div', { class: 'grid', 'data-kind': 'proxy passthrough' },
    field('Target address', 'ip', { value: host && host.ip ? host.ip : '', placeholder: '10.0.0.5', required: true }),
    field('Target port', 'targetPort', { type: 'number', min: 1, max: 65535, value: host && host.targetPort ? host.targetPort : 80, required: true }),
    h('label', {}, 'More targets (ip:port or ip:port@weight, one per line)',
      h('textarea', { name: 'targets', rows: 2, placeholder: '10.0.0.6:80' }, others.map((t) => `${t.ip.includes(':') ? `[${t.ip}]` : t.ip}:${t.port}${t.weight > 1 ? `@${t.weight}` : ''}`).join('\n'))),
    h('label', {}, 'Load balancing', balance));
  // Only the fields of the chosen kind show (and only theirs are required).
  const showKind = () => {
    for (const part of [targetFields, kinds.redirect, kinds.answer, kinds.pass]) {
      const on = part.dataset.kind.split(' ').includes(kinds.select.value);
      part.hidden = !on;
      for (const input of part.querySelectorAll('input, select, textarea')) input.disabled = !on;
    }
  };
  kinds.select.addEventListener('change', showKind);
  const form = h('form', { class: 'grid', 'aria-label': editing ? `Edit ${host.host}` : 'Add a host' },
    field('Host name or pattern', 'host', { value: host ? host.host : '', placeholder: 'app.example.com, *.example.com', required: true }),
    h('label', {}, 'Answers with', kinds.select),
    targetFields, kinds.redirect, kinds.answer, kinds.pass,
    h('fieldset', { class: 'checks' }, h('legend', {}, 'HTTPS'),
      check('Redirect HTTP to HTTPS', 'forcessl', host ? host.forcessl : true),
      check('HTTPS to the target', 'targetssl', host ? host.targetssl : false)),
    accessFields(host),
    healthFields(host),
    dressFields(host),
    h('div', { class: 'actions' },
      h('button', { class: 'primary', type: 'submit' }, editing ? 'Save' : 'Add host'),
      h('button', { type: 'button', onclick: () => done(false) }, 'Cancel')));
  showKind();
  onSubmit(form, async (f) => {
    const forwards = ['proxy', 'passthrough'].includes(f.get('kind'));
    const body = { host: f.get('host'), forcessl: f.has('forcessl'), targetssl: f.has('targetssl'), ...kindBody(f, host) };
    if (forwards) Object.assign(body, { ip: f.get('ip'), targetPort: Number(f.get('targetPort')), balance: f.get('balance') });
    Object.assign(body, accessBody(f, host), healthBody(f, host));
    const more = forwards ? parseTargets(f.get('targets') || '') : [];
    // The first target is the address and port above; the list replaces the host's.
    if (forwards && (more.length || others.length)) {
      const first = editing && host.targets ? { ...host.targets[0], ip: body.ip, port: body.targetPort } : { ip: body.ip, port: body.targetPort, weight: 1 };
      body.targets = [first, ...more];
    }
    const answer = editing ? await api('PUT', `host/${enc(host.host)}`, body) : await api('POST', 'host', body);
    notice(answer.message || 'Saved.');
    done(true);
  });
  return form;
}

/** Issuance steps after which nothing moves until the next attempt. */
const SETTLED = new Set(['', 'issued', 'failed']);

/** Each target's health as the answering node sees it (hosts with several targets or checks). */
async function targetHealth(name) {
  try {
    const host = (await api('GET', `host/${enc(name)}`)).results;
    const watched = host.targets && host.targets.some((t) => t.health);
    return watched ? h('ul', { class: 'targets', 'aria-label': `Targets of ${name}` }, host.targets.map((t) =>
      h('li', {}, `${t.ip}:${t.port} `, h('span', { class: `badge ${t.health === 'healthy' ? 'ok' : t.health === 'unknown' ? '' : 'bad'}` }, t.health),
        t.last_error ? h('span', { class: 'muted' }, ` ${t.last_error}`) : null))) : null;
  } catch {
    return null;
  }
}

async function certDetails(name, into) {
  if (!into.firstChild) into.replaceChildren(h('p', { class: 'muted' }, 'Loading…'));
  // Only hosts whose targets' health is followed have a list (DOM methods print a null).
  const health = [await targetHealth(name)].filter(Boolean);
  try {
    const c = certOf(name, (await api('GET', 'cert')).results);
    if (!c) {
      into.replaceChildren(h('p', { class: 'muted' }, 'No certificate yet: one is issued on the first HTTPS request.'), ...health);
      return;
    }
    // An issuance under way: its progress is followed while the details show.
    if (!SETTLED.has(c.step || '')) setTimeout(() => { if (into.isConnected && !into.closest('[hidden]')) certDetails(name, into); }, 1000);
    into.replaceChildren(h('dl', { class: 'kv' },
      h('dt', {}, 'Certificate'), h('dd', {}, c.host),
      h('dt', {}, 'Source'), h('dd', {}, SOURCE[c.source] || c.source || '—'),
      h('dt', {}, 'CA'), h('dd', {}, c.ca ? caName(c.ca) : '—'),
      h('dt', {}, 'Status'), h('dd', {}, c.status),
      h('dt', {}, 'Issuance step'), h('dd', {}, c.step || '—'),
      h('dt', {}, 'Expires'), h('dd', {}, when(c.not_after)),
      h('dt', {}, 'Next attempt'), h('dd', {}, when(c.next_attempt)),
      h('dt', {}, 'Failures'), h('dd', {}, c.failures ?? 0),
      h('dt', {}, 'Last error'), h('dd', { class: c.last_error ? 'error' : '' }, c.last_error || '—')), ...health);
  } catch (error) {
    into.replaceChildren(h('p', { class: 'error' }, error.message), ...health);
  }
}

/** What guards a host, in a few words each. */
function policies(host) {
  const out = [];
  if (host.healthCheck) out.push(`checked ${host.healthCheck.path}`);
  if (host.basicAuth) out.push('password');
  if (host.allow || host.deny) out.push('address list');
  if (host.rateLimit) out.push(`≤ ${host.rateLimit.perSecond}/s`);
  if (host.forwardAuth) out.push('forward auth');
  if (host.hsts) out.push('HSTS');
  if (host.headers) out.push('header rules');
  if (host.errorPages) out.push('error page');
  if (host.compress) out.push('compressed');
  return out;
}

/** Redraws the current page's data in place (set by pages whose forms must survive it). */
let redraw = null;

/** Runs `draw`, which draws some of the page anew, keeping the keyboard's place: when the
 * focus is lost, the control that had it, found again by its label (a row's *Edit* after
 * saving), or else the page's heading (never nowhere, where a keyboard user would start again
 * from the top). */
async function keepingFocus(draw) {
  const before = document.activeElement;
  // Remembered as labelled() finds it again: by its label, else its text (a sort button's).
  const label = before && before !== document.body ? before.getAttribute('aria-label') || before.textContent : null;
  await draw();
  const now = document.activeElement;
  // Lost: on nothing, or on a control no longer in the page (draws may overlap).
  if (now && now !== document.body && now.isConnected) return;
  (labelled(label) || main().querySelector('h1'))?.focus({ preventScroll: true });
}

/** The control of the page whose label (`aria-label`, else its text) is `label`. */
function labelled(label) {
  if (!label) return null;
  return [...main().querySelectorAll('button, a, input, select')].find((el) => (el.getAttribute('aria-label') || el.textContent) === label) || null;
}

/** A host's certificate in a few words, as a badge. */
function certBadge(host, certs) {
  const c = certOf(host, certs);
  if (!c) return h('span', { class: 'badge' }, host.includes('*') ? 'per name, on demand' : 'none yet');
  return certState(c);
}

/** Days before expiry under which a valid certificate is shown as needing care. */
const SOON_DAYS = 14;

/** A certificate's state (`GET /api/cert`) as a badge: failing, expired, or valid with the
 * days left (a warning when few are left or renewals fail). */
function certState(c) {
  if (c.status === 'none') return h('span', { class: 'badge bad' }, 'failing');
  if (c.status !== 'valid') return h('span', { class: 'badge bad' }, c.status);
  const days = Math.floor((c.not_after - Date.now()) / 86400000);
  if (c.renewal_failing) return h('span', { class: 'badge bad', title: `until ${when(c.not_after)}` }, `not renewed, ${days} days left`);
  const care = c.failures > 0 || days < SOON_DAYS || (c.source === 'uploaded' && c.last_error);
  return h('span', { class: `badge ${care ? 'warn' : 'ok'}`, title: `until ${when(c.not_after)}` }, `valid, ${days} days left`);
}

/** Every host (with its details) and every managed certificate. */
async function hostsAndCerts() {
  const [hosts, certs] = await Promise.all([api('GET', 'host?detail=true'), api('GET', 'cert')]);
  return [hosts.results, certs.results];
}

/** A target's health in a word: online, offline, or unknown (no traffic yet); `null` when
 * the node does not follow the host's health (one target, no checks). */
function online(target) {
  if (!target.health) return null;
  if (target.health === 'healthy') return 'online';
  return target.health === 'unknown' ? 'unknown' : 'offline';
}

/** How the hosts table can be sorted: each column's key. */
const HOST_SORTS = {
  host: (x) => x.host,
  target: (x) => `${x.ip}:${String(x.targetPort).padStart(5, '0')}`,
  certificate: (x, certs) => { const c = certOf(x.host, certs); return c && c.not_after ? c.not_after : c ? 0 : Number.MAX_SAFE_INTEGER; },
  access: (x) => policies(x).join(', ') || '~',
  incoming: (x) => (x.forcessl ? 0 : 1),
  updated: (x) => -(x.updated_on || 0),
};

/** What the hosts table can be filtered to. */
const HOST_FILTERS = {
  all: ['All hosts', () => true],
  down: ['A target offline', (x) => (x.targets || []).some((t) => online(t) === 'offline')],
  certs: ['Certificate needs care', (x, certs) => { const c = certOf(x.host, certs); return Boolean(c && (c.status !== 'valid' || c.failures > 0)); }],
  guarded: ['With access rules', (x) => Boolean(x.basicAuth || x.allow || x.deny || x.rateLimit || x.forwardAuth)],
  checked: ['With health checks', (x) => Boolean(x.healthCheck)],
  balanced: ['Several targets', (x) => (x.targets || []).length > 1],
  https: ['HTTPS only', (x) => x.forcessl],
  plain: ['Plain HTTP served', (x) => !x.forcessl],
};

const hostView = { search: '', sort: 'host', descending: false, filter: 'all' };

async function hostsPage() {
  let [hosts, certs] = await hostsAndCerts();
  const search = h('input', { type: 'search', name: 'search', placeholder: 'Search hosts', value: hostView.search });
  const show = h('select', { name: 'filter' }, Object.entries(HOST_FILTERS).map(([value, [label]]) =>
    h('option', { value, selected: hostView.filter === value }, label)));
  // One editor, in a modal dialog, for adding and editing (Esc or Cancel closes it).
  const editor = h('dialog', { class: 'editor', 'aria-labelledby': 'editor-title' });
  // Closed, the editor gives the focus back to what opened it (drawn anew meanwhile, maybe).
  let opener = 'New host';
  editor.addEventListener('close', () => {
    editor.replaceChildren();
    if (!main().contains(document.activeElement) || document.activeElement === main()) labelled(opener)?.focus();
  });
  const edit = (host) => {
    opener = host ? `Edit ${host.host}` : 'New host';
    editor.replaceChildren(h('h2', { id: 'editor-title' }, host ? `Edit ${host.host}` : 'Add a host'),
      hostForm(host, (saved) => { editor.close(); if (saved) keepingFocus(redraw); }));
    editor.showModal();
    editor.querySelector('input').focus();
  };
  const rows = h('tbody');
  // Hosts whose details are open, and those selected, stay so when a live change redraws.
  const open = new Set();
  const selected = new Set();
  const chosen = h('span', { class: 'muted', 'aria-live': 'polite' });
  const removeSelected = h('button', { type: 'button', class: 'danger', disabled: true, onclick: async () => {
    const names = [...selected];
    if (!confirm(`Delete ${names.length} host${names.length === 1 ? '' : 's'}: ${names.join(', ')}?`)) return;
    const failed = [];
    for (const name of names) {
      try { await api('DELETE', `host/${enc(name)}`); selected.delete(name); } catch (e) { failed.push(`${name}: ${e.message}`); }
    }
    notice(failed.length ? `Not deleted: ${failed.join('; ')}` : `${names.length} host${names.length === 1 ? '' : 's'} deleted.`);
    keepingFocus(redraw);
  } }, 'Delete selected');
  const renewSelected = h('button', { type: 'button', disabled: true, onclick: async () => {
    const names = [...selected];
    const failed = [];
    for (const name of names) {
      try { await api('PUT', `host/${enc(name)}/renew`); } catch (e) { failed.push(`${name}: ${e.message}`); }
    }
    notice(failed.length ? `Not renewed: ${failed.join('; ')}` : `Renewal asked for ${names.length} host${names.length === 1 ? '' : 's'}.`);
  } }, 'Renew selected');
  const everyBox = h('input', { type: 'checkbox', 'aria-label': 'Select every host shown' });
  let shown = [];
  const selectionChanged = () => {
    for (const name of selected) if (!hosts.some((x) => x.host === name)) selected.delete(name);
    removeSelected.disabled = renewSelected.disabled = selected.size === 0;
    chosen.textContent = selected.size ? `${selected.size} selected` : '';
    everyBox.checked = shown.length > 0 && shown.every((x) => selected.has(x.host));
  };
  everyBox.addEventListener('change', () => {
    for (const x of shown) { if (everyBox.checked) selected.add(x.host); else selected.delete(x.host); }
    render();
  });
  const header = (label, key, wide) => {
    const sorted = hostView.sort === key;
    return h('th', { class: wide ? 'wide' : null, 'aria-sort': sorted ? (hostView.descending ? 'descending' : 'ascending') : 'none' },
      h('button', { type: 'button', class: 'sort', 'data-sort': key, onclick: () => {
        hostView.descending = sorted ? !hostView.descending : false;
        hostView.sort = key;
        render();
        // The header is drawn anew: the focus stays on this column's button.
        head.querySelector(`[data-sort="${key}"]`).focus();
      } }, label, sorted ? (hostView.descending ? ' ↓' : ' ↑') : ''));
  };
  const head = h('thead');
  const render = () => {
    hostView.search = search.value;
    hostView.filter = show.value;
    const q = search.value.trim().toLowerCase();
    const keep = HOST_FILTERS[hostView.filter][1];
    const key = HOST_SORTS[hostView.sort];
    shown = hosts.filter((x) => (!q || x.host.includes(q) || String(x.ip).includes(q)) && keep(x, certs))
      .sort((a, b) => { const [p, r] = [key(a, certs), key(b, certs)]; return (p < r ? -1 : p > r ? 1 : 0) * (hostView.descending ? -1 : 1); });
    head.replaceChildren(h('tr', {}, h('th', {}, everyBox), header('Host', 'host'), header('Targets', 'target'),
      header('Certificate', 'certificate'), header('Access', 'access'), header('Incoming', 'incoming', true),
      header('Updated', 'updated'), h('th', {}, 'Actions')));
    rows.replaceChildren(...shown.map((x) => {
      const detail = h('td', { colspan: 8 });
      const detailRow = h('tr', { hidden: !open.has(x.host) }, detail);
      if (open.has(x.host)) certDetails(x.host, detail);
      const expand = (on) => { detailRow.hidden = !on; if (on) open.add(x.host); else open.delete(x.host); };
      const box = h('input', { type: 'checkbox', 'aria-label': `Select ${x.host}`, checked: selected.has(x.host) });
      box.addEventListener('change', () => { if (box.checked) selected.add(x.host); else selected.delete(x.host); selectionChanged(); });
      const row = h('tr', {},
        h('td', {}, box),
        h('td', {}, h('a', { href: `${x.forcessl ? 'https' : 'http'}://${x.host.replace(/^\*+\./, 'www.')}`, rel: 'noreferrer', target: '_blank' }, x.host),
          x.domain && x.domain.provider ? h('div', { class: 'muted' }, `DNS: ${x.domain.provider.displayName} – ${x.domain.provider.name}`) : null),
        h('td', {}, x.kind === 'redirect' ? h('div', {}, `→ ${x.redirect.url} (${x.redirect.code})`)
          : x.kind === 'static' ? h('div', {}, `static answer ${x.static.status}`)
          : (x.targets || [{ ip: x.ip, port: x.targetPort, weight: 1 }]).map((t) => {
          const state = online(t);
          return h('div', {}, `${x.kind === 'passthrough' ? 'TLS passthrough to ' : x.targetssl ? 'https://' : 'http://'}${t.ip.includes(':') ? `[${t.ip}]` : t.ip}:${t.port}${t.weight > 1 ? ` ×${t.weight}` : ''}`,
            state ? h('span', { class: `badge ${state === 'online' ? 'ok' : state === 'offline' ? 'bad' : ''}` }, state) : null);
        }),
        x.targets && x.targets.length > 1 ? h('div', { class: 'muted' }, (x.balance || 'round_robin').replace('_', ' ')) : null),
        h('td', {}, x.kind === 'passthrough' ? h('span', { class: 'badge' }, 'the targets\' own') : certBadge(x.host, certs)),
        h('td', {}, policies(x).map((p) => h('span', { class: 'badge' }, p))),
        h('td', { class: 'wide' }, x.forcessl ? h('span', { class: 'badge ok' }, 'HTTPS only') : h('span', { class: 'badge' }, 'HTTP and HTTPS')),
        h('td', { class: 'wide' }, when(x.updated_on)),
        h('td', {}, h('div', { class: 'actions' },
          h('button', { type: 'button', 'aria-label': `Certificate of ${x.host}`, onclick: () => { expand(detailRow.hidden); if (!detailRow.hidden) certDetails(x.host, detail); } }, 'Certificate'),
          h('button', { type: 'button', 'aria-label': `Renew the certificate of ${x.host}`, onclick: async () => {
            try { notice((await api('PUT', `host/${enc(x.host)}/renew`)).message); certDetails(x.host, detail); expand(true); } catch (e) { notice(e.message); }
          } }, 'Renew'),
          h('button', { type: 'button', 'aria-label': `Edit ${x.host}`, onclick: () => edit(x) }, 'Edit'),
          h('button', { type: 'button', class: 'danger', 'aria-label': `Delete ${x.host}`, onclick: async () => {
            if (!confirm(`Delete ${x.host}?`)) return;
            try { notice((await api('DELETE', `host/${enc(x.host)}`)).message); keepingFocus(redraw); } catch (e) { notice(e.message); }
          } }, 'Delete'))));
      return [row, detailRow];
    }).flat());
    empty.hidden = shown.length > 0;
    empty.textContent = hosts.length ? 'No host matches.' : 'No hosts yet.';
    selectionChanged();
  };
  const empty = h('p', { class: 'muted' });
  search.addEventListener('input', render);
  show.addEventListener('change', render);
  page('Hosts', editor,
    h('section', { class: 'card' },
      h('div', { class: 'toolbar' }, h('label', {}, 'Search', search), h('label', {}, 'Show', show),
        h('button', { type: 'button', class: 'primary', onclick: () => edit(null) }, 'New host')),
      h('div', { class: 'actions bulk' }, renewSelected, removeSelected, chosen),
      h('table', { 'aria-label': 'Hosts' }, head, rows),
      empty));
  render();
  redraw = async () => {
    const [nowHosts, nowCerts] = await hostsAndCerts();
    // Nothing this page shows changed: the rows stay as they are (under the pointer too).
    if (JSON.stringify([nowHosts, nowCerts]) === JSON.stringify([hosts, certs])) return;
    [hosts, certs] = [nowHosts, nowCerts];
    render();
  };
}

/** Renews the certificate `name`: through the host that answers it (a wildcard certificate's
 * pattern is its own name). */
async function renewCert(name) {
  let pattern = name;
  if (!name.startsWith('*.')) {
    const found = (await api('GET', `host/lookup/${enc(name)}`)).results;
    if (!found) throw new Error(`no host answers ${name}: nothing to renew`);
    pattern = found.host;
  }
  return (await api('PUT', `host/${enc(pattern)}/renew`)).message;
}

/** Saves the certificate `name` as a PEM file: its chain, and for admins its key (never an
 * uploaded certificate's: that key is never shown again). */
async function downloadCert(c) {
  const withKey = me.role === 'admin' && c.source !== 'uploaded';
  const answer = await api('GET', `cert/${enc(c.host)}?include_private_key=${withKey}`);
  const pem = [answer.fullchain_pem || answer.cert_pem, answer.privkey_pem].filter(Boolean).join('\n');
  const link = h('a', { href: URL.createObjectURL(new Blob([pem], { type: 'application/x-pem-file' })), download: `${c.host.replace('*', '_wildcard')}.pem` });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

/** The CA that issued a certificate: the host of its ACME directory URL, or `internal`. */
function caName(ca) {
  try { return new URL(ca).host; } catch { return ca; }
}

/** Where a certificate comes from, in words. */
const SOURCE = { acme: 'ACME', dns01: 'ACME, DNS-01', internal: 'internal CA', uploaded: 'uploaded' };

/** The form that uploads a certificate and its key (admins). */
function uploadForm() {
  const form = h('form', { class: 'grid', 'aria-label': 'Upload a certificate' },
    field('Host name or *.zone pattern', 'host', { required: true, autocomplete: 'off', placeholder: 'app.example.com' }),
    field('Certificate chain (PEM, the leaf first)', 'fullchain_pem', { type: 'file', required: true, accept: '.pem,.crt,.cer' }),
    field('Private key (PEM)', 'privkey_pem', { type: 'file', required: true, accept: '.pem,.key' }),
    h('div', {}, h('button', { class: 'primary', type: 'submit' }, 'Upload')));
  onSubmit(form, async (f) => {
    const host = String(f.get('host')).trim();
    const [chain, key] = await Promise.all([f.get('fullchain_pem').text(), f.get('privkey_pem').text()]);
    const done = await api('PUT', `cert/${enc(host)}`, { fullchain_pem: chain, privkey_pem: key });
    notice(`Uploaded the certificate of ${done.results.host}: it is served from now on and never renewed automatically.`);
    form.reset();
    keepingFocus(redraw);
  });
  return form;
}

async function certsPage() {
  let certs = (await api('GET', 'cert')).results;
  const admin = me.role === 'admin';
  const rows = h('tbody');
  // Histories open stay open when a live change redraws the list.
  const histories = new Set();
  const empty = h('p', { class: 'muted' }, 'No certificates yet: each is issued on the first HTTPS request for a name a host answers, or by DNS-01 for a wildcard host.');
  const draw = () => {
    rows.replaceChildren(...certs.map((c) => {
      const state = certState(c);
      const uploaded = c.source === 'uploaded';
      return h('tr', {},
        h('td', {}, c.host, c.names && c.names.length > 1 ? h('div', { class: 'muted' }, c.names.join(', ')) : null),
        h('td', {}, SOURCE[c.source] || c.source || '—', c.issuer ? h('div', { class: 'muted' }, c.issuer) : null,
          c.ca && c.ca !== 'internal' ? h('div', { class: 'muted' }, `from ${caName(c.ca)}`) : null),
        h('td', {}, c.not_after ? when(c.not_after) : '—'),
        h('td', {}, state, c.step && c.step !== 'issued' && c.step !== 'uploaded' ? h('div', { class: 'muted' }, c.step) : null),
        h('td', { class: c.last_error ? 'error' : 'muted' }, c.last_error ? (uploaded ? c.last_error : `${c.failures} failure${c.failures === 1 ? '' : 's'}: ${c.last_error}`) : 'none',
          c.next_attempt && !uploaded ? h('div', { class: 'muted' }, `next attempt ${when(c.next_attempt)}`) : null),
        h('td', {}, c.history && c.history.length ? h('details', { open: histories.has(c.host), ontoggle: (e) => { if (e.target.open) histories.add(c.host); else histories.delete(c.host); } }, h('summary', {}, `${c.history.length} event${c.history.length === 1 ? '' : 's'}`),
          h('ol', { class: 'history' }, c.history.map((e) => h('li', {}, h('span', { class: 'muted' }, when(e.at)), ' ', e.event)))) : h('span', { class: 'muted' }, '—')),
        h('td', {}, h('div', { class: 'actions' },
          uploaded ? null : h('button', { type: 'button', 'aria-label': `Renew ${c.host}`, onclick: async () => {
            try { notice(await renewCert(c.host)); keepingFocus(redraw); } catch (e) { notice(e.message); }
          } }, 'Renew'),
          c.status === 'none' ? null : h('button', { type: 'button', 'aria-label': `Download ${c.host}`, onclick: async () => {
            try { await downloadCert(c); } catch (e) { notice(e.message); }
          } }, 'Download'),
          uploaded && admin ? h('button', { type: 'button', class: 'danger', 'aria-label': `Remove the uploaded certificate of ${c.host}`, onclick: async () => {
            if (!confirm(`Remove the uploaded certificate of ${c.host}? It gets automatic certificates again.`)) return;
            try { notice((await api('DELETE', `cert/${enc(c.host)}`)).message); keepingFocus(redraw); } catch (e) { notice(e.message); }
          } }, 'Remove') : null)));
    }));
    empty.hidden = certs.length > 0;
  };
  page('Certificates',
    admin ? h('section', { class: 'card', 'aria-labelledby': 'upload' }, h('h2', { id: 'upload' }, 'Upload a certificate'),
      h('p', { class: 'muted' }, 'For a name Portico should not get certificates for itself (a company CA, a commercial certificate). It is checked (chain order, key, names, dates), served from the next handshake, never renewed, and its key is never shown again; you are alerted when a third of its life is left.'),
      uploadForm()) : null,
    h('section', { class: 'card' },
      h('p', { class: 'muted' }, admin ? 'A download holds the chain and the private key (the export is logged), but an uploaded certificate\'s key.' : 'A download holds the certificate chain.'),
      h('table', { 'aria-label': 'Certificates' },
        h('thead', {}, h('tr', {}, h('th', {}, 'Name'), h('th', {}, 'Source'), h('th', {}, 'Expires'), h('th', {}, 'State'), h('th', {}, 'Last error'), h('th', {}, 'History'), h('th', {}, 'Actions'))),
        rows),
      empty));
  draw();
  redraw = async () => { certs = (await api('GET', 'cert')).results; draw(); };
}

function testerPage() {
  const out = h('div', { 'aria-live': 'polite' });
  const form = h('form', { class: 'grid', 'aria-label': 'Pattern tester' },
    field('Name', 'name', { placeholder: 'x.y.example.com', required: true }),
    h('div', {}, h('button', { class: 'primary', type: 'submit' }, 'Test')));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const name = new FormData(form).get('name').trim();
    const found = await api('GET', `host/lookup/${enc(name)}`);
    const cert = certOf(name, (await api('GET', 'cert')).results);
    const host = found.results;
    out.replaceChildren(h('dl', { class: 'kv', id: 'tester-result' },
      h('dt', {}, 'Name'), h('dd', {}, name),
      h('dt', {}, 'Answered by'), h('dd', {}, host ? host.host : 'no host: 404'),
      h('dt', {}, 'Target'), h('dd', {}, host ? `${host.targetssl ? 'https' : 'http'}://${host.ip}:${host.targetPort}` : '—'),
      h('dt', {}, 'Certificate'), h('dd', {}, cert ? `${cert.host} (${cert.status}${cert.not_after ? ', until ' + when(cert.not_after) : ''})` : host ? 'none yet: issued on the first HTTPS request' : '—')));
  });
  page('Pattern tester', h('section', { class: 'card' },
    h('p', { class: 'muted' }, 'Which host answers a name, and which certificate covers it.'), form, out));
}

/** Streams (admins): TCP ports forwarded to targets. */
async function streamsPage() {
  if (!me || me.role !== 'admin') return page('Streams', h('p', {}, 'Only admins manage streams.'));
  const streams = (await api('GET', 'stream')).results;
  const form = h('form', { class: 'grid', 'aria-label': 'Add a stream' },
    field('Listen on (address:port)', 'listen', { required: true, placeholder: '0.0.0.0:5432', autocomplete: 'off' }),
    h('label', {}, 'Protocol', h('select', { name: 'protocol' }, [['tcp', 'TCP'], ['udp', 'UDP (a session per client address)']].map(([value, label]) => h('option', { value }, label)))),
    h('label', {}, 'Targets (ip:port or ip:port@weight, one per line)', h('textarea', { name: 'targets', rows: 2, required: true, placeholder: '10.0.0.5:5432' })),
    h('label', {}, 'Balancing', h('select', { name: 'balance' }, [['round_robin', 'In turn (round robin)'], ['ip_hash', 'Same client, same target'], ['first', 'First that answers (standbys)']]
      .map(([value, label]) => h('option', { value }, label)))),
    h('label', {}, 'Allowed addresses (one per line; empty: anyone)', h('textarea', { name: 'allow', rows: 1 })),
    h('label', {}, 'Denied addresses', h('textarea', { name: 'deny', rows: 1 })),
    check('Send a PROXY protocol header to the target (TCP)', 'proxyProtocol', false),
    check('Check the targets: a TCP connection every 5 s, passed over after 3 failures (TCP)', 'healthCheck', false),
    h('div', {}, h('button', { class: 'primary', type: 'submit' }, 'Add stream')));
  onSubmit(form, async (f) => {
    const body = { listen: String(f.get('listen')).trim(), protocol: f.get('protocol'), targets: parseTargets(f.get('targets') || ''), balance: f.get('balance'),
      allow: textLines(f.get('allow')), deny: textLines(f.get('deny')), proxyProtocol: f.has('proxyProtocol'),
      healthCheck: f.has('healthCheck') ? {} : null };
    notice((await api('POST', 'stream', body)).message);
    await streamsPage();
    main().querySelector('form [name="listen"]').focus();
  });
  page('Streams',
    h('section', { class: 'card' }, h('h2', {}, 'Add a stream'),
      h('p', { class: 'muted' }, 'A stream forwards every TCP connection to its port (or every UDP client\'s datagrams), bytes as they are, to one of its targets (a database, SSH, DNS, a game server); a target that fails is passed over for a while. Every node that proxies listens on it.'),
      form),
    h('section', { class: 'card' }, streams.length ? h('table', { 'aria-label': 'Streams' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Listens on'), h('th', {}, 'Targets'), h('th', {}, 'Rules'), h('th', {}, 'Actions'))),
      h('tbody', {}, streams.map((x) => h('tr', {},
        h('td', {}, x.listen, h('div', { class: 'muted' }, x.protocol)),
        h('td', {}, x.targets.map((t) => h('div', {}, `${t.ip}:${t.port}${t.weight > 1 ? ` ×${t.weight}` : ''}`)),
          x.targets.length > 1 ? h('div', { class: 'muted' }, x.balance.replace('_', ' ')) : null),
        h('td', {}, [x.allow.length ? 'allow list' : null, x.deny.length ? 'deny list' : null, x.proxyProtocol ? 'PROXY protocol' : null, x.healthCheck ? 'checked' : null]
          .filter(Boolean).map((b) => h('span', { class: 'badge' }, b))),
        h('td', {}, h('button', { type: 'button', class: 'danger', 'aria-label': `Delete the stream on ${x.listen}`, onclick: async () => {
          if (!confirm(`Delete the stream on ${x.listen}? Its port closes.`)) return;
          try { notice((await api('DELETE', `stream/${enc(x.id)}`)).message); route(true); } catch (e) { notice(e.message); }
        } }, 'Delete'))))))
      : h('p', { class: 'muted' }, 'No streams.')));
}

async function dnsPage() {
  const [providers, types] = await Promise.all([api('GET', 'dns?detail=true'), api('OPTIONS', 'dns')]);
  const creds = h('div', { class: 'grid' });
  const select = h('select', { name: 'dnsProvider', required: true },
    h('option', { value: '' }, 'Choose a provider'),
    types.results.map((t) => h('option', { value: t.name }, t.displayName)));
  const showFields = () => {
    const type = types.results.find((t) => t.name === select.value);
    creds.replaceChildren(...Object.entries(type ? type.fields : {}).map(([key, spec]) =>
      field(spec.displayName, key, { type: spec.isPrivate ? 'password' : 'text', autocomplete: 'off', required: true })));
  };
  select.addEventListener('change', showFields);
  const form = h('form', { class: 'grid', 'aria-label': 'Add a DNS provider' },
    field('Name', 'name', { required: true, placeholder: 'production' }),
    h('label', {}, 'Provider', select), creds,
    h('div', {}, h('button', { class: 'primary', type: 'submit' }, 'Add provider')));
  onSubmit(form, async (f) => {
    const body = Object.fromEntries(f);
    notice((await api('POST', 'dns', body)).message);
    form.reset();
    showFields();
    keepingFocus(redraw);
  });
  const list = h('div');
  const draw = (providers) => list.replaceChildren(providers.length ? h('table', { 'aria-label': 'DNS providers' },
    h('thead', {}, h('tr', {}, h('th', {}, 'Name'), h('th', {}, 'Provider'), h('th', {}, 'Zones'), h('th', {}, 'Actions'))),
    h('tbody', {}, providers.map((p) => h('tr', {},
      h('td', {}, p.name),
      h('td', {}, h('img', { src: p.displayIconHtml, alt: '', width: 20, height: 20 }), ' ', p.displayName),
      h('td', {}, (p.domains || []).map((d) => h('span', { class: 'badge' }, d.domain))),
      h('td', {}, h('div', { class: 'actions' },
        h('button', { type: 'button', 'aria-label': `Refresh the zones of ${p.name}`, onclick: async () => {
          try { await api('POST', `dns/domain/refresh/${enc(p.id)}`); keepingFocus(redraw); } catch (e) { notice(e.message); }
        } }, 'Refresh zones'),
        h('button', { type: 'button', class: 'danger', 'aria-label': `Delete ${p.name}`, onclick: async () => {
          if (!confirm(`Delete ${p.name} and its zones?`)) return;
          try { notice((await api('DELETE', `dns/${enc(p.id)}`)).message); keepingFocus(redraw); } catch (e) { notice(e.message); }
        } }, 'Delete')))))))
    : h('p', { class: 'muted' }, 'No DNS providers yet.'));
  draw(providers.results);
  page('DNS providers',
    h('section', { class: 'card' }, h('h2', {}, 'Add a DNS provider'),
      h('p', { class: 'muted' }, 'Credentials are checked with the provider, then stored; they are never shown again.'), form),
    h('section', { class: 'card' }, h('h2', {}, 'Providers'), list));
  redraw = async () => draw((await api('GET', 'dns?detail=true')).results);
}

async function usersPage() {
  if (!me || me.role !== 'admin') return page('Users', h('p', {}, 'Only admins manage users.'));
  const users = (await api('GET', 'user?detail=true')).results;
  const form = h('form', { class: 'grid', 'aria-label': 'Add a user' },
    field('User name', 'username', { required: true, autocomplete: 'off' }),
    field('Password', 'password', { type: 'password', required: true, autocomplete: 'new-password' }),
    check('Admin', 'admin', false),
    h('div', {}, h('button', { class: 'primary', type: 'submit' }, 'Add user')));
  onSubmit(form, async (f) => {
    notice((await api('POST', 'user', { username: f.get('username'), password: f.get('password'), role: f.has('admin') ? 'admin' : 'user' })).message);
    // Drawn anew, the form empty and ready for the next user (Enter in a field sends it, and a
    // live refresh leaves a page alone while one of its fields has the focus).
    await usersPage();
    main().querySelector('form [name="username"]').focus();
  });
  // Setting another user's password: one form, in a modal dialog (Esc or Cancel closes it).
  const dialog = h('dialog', { class: 'editor', 'aria-labelledby': 'password-title' });
  let opener = null;
  dialog.addEventListener('close', () => { dialog.replaceChildren(); if (!main().contains(document.activeElement)) labelled(opener)?.focus(); });
  const setPassword = (name) => {
    opener = `Set password for ${name}`;
    const reset = h('form', { class: 'grid', 'aria-label': `Set password for ${name}` },
      field('New password', 'password', { type: 'password', required: true, minlength: 8, autocomplete: 'new-password' }),
      field('New password again', 'again', { type: 'password', required: true, minlength: 8, autocomplete: 'new-password' }),
      h('div', { class: 'actions' }, h('button', { class: 'primary', type: 'submit' }, 'Set password'),
        h('button', { type: 'button', onclick: () => dialog.close() }, 'Cancel')));
    onSubmit(reset, async (f) => {
      if (f.get('password') !== f.get('again')) throw new ApiError(422, { keys: [{ key: 'again', message: 'the two passwords differ' }] });
      await api('PUT', `user/password/${enc(name)}`, { password: f.get('password') });
      dialog.close();
      notice(`The password of ${name} is set; their sessions were signed out.`);
    });
    dialog.replaceChildren(h('h2', { id: 'password-title' }, `Set password for ${name}`),
      h('p', { class: 'muted' }, 'Their current password is not needed; every session they have is signed out.'), reset);
    dialog.showModal();
    dialog.querySelector('input').focus();
  };
  page('Users', dialog,
    h('section', { class: 'card' }, h('h2', {}, 'Add a user'), form),
    h('section', { class: 'card' }, h('table', { 'aria-label': 'Users' },
      h('thead', {}, h('tr', {}, h('th', {}, 'User'), h('th', {}, 'Role'), h('th', { class: 'wide' }, 'Created'), h('th', {}, 'Actions'))),
      h('tbody', {}, users.map((u) => h('tr', {},
        h('td', {}, u.username), h('td', {}, u.role), h('td', { class: 'wide' }, when(u.created_on)),
        h('td', {}, u.username === me.username ? h('a', { href: '#/account' }, 'you: your account') : h('div', { class: 'actions' },
          h('button', { type: 'button', 'aria-label': `Set password for ${u.username}`, onclick: () => setPassword(u.username) }, 'Set password'),
          h('button', { type: 'button', class: 'danger', 'aria-label': `Delete ${u.username}`, onclick: async () => {
            if (!confirm(`Delete ${u.username}?`)) return;
            try { notice((await api('DELETE', `user/${enc(u.username)}`)).message); route(true); } catch (e) { notice(e.message); }
          } }, 'Delete')))))))));
}

async function tokensPage() {
  const tokens = (await api('GET', 'token')).results;
  const shown = h('div', { 'aria-live': 'polite' });
  const form = h('form', { class: 'grid', 'aria-label': 'Create an API token' },
    field('Name', 'name', { required: true, placeholder: 'deploy script' }),
    field('Valid for (days)', 'days', { type: 'number', min: 1, value: 90 }),
    h('div', {}, h('button', { class: 'primary', type: 'submit' }, 'Create token')));
  onSubmit(form, async (f) => {
    const made = await api('POST', 'token', { name: f.get('name'), days: Number(f.get('days')) });
    await tokensPage();
    const into = document.getElementById('new-token');
    const secret = h('p', { class: 'secret', id: 'token-value', tabindex: '-1' }, made.token);
    into.replaceChildren(h('p', {}, 'Copy it now: it is not shown again.'), secret);
    // The focus goes to the token, which a screen reader then reads.
    secret.focus();
  });
  page('API tokens',
    h('section', { class: 'card' }, h('h2', {}, 'Create an API token'), form, h('div', { id: 'new-token' }, shown)),
    h('section', { class: 'card' }, tokens.length ? h('table', { 'aria-label': 'API tokens' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Name'), h('th', { class: 'wide' }, 'Created'), h('th', {}, 'Expires'), h('th', {}, 'Actions'))),
      h('tbody', {}, tokens.map((t) => h('tr', {},
        h('td', {}, t.name), h('td', { class: 'wide' }, when(t.created_on)), h('td', {}, when(t.expires_on)),
        h('td', {}, h('button', { type: 'button', class: 'danger', 'aria-label': `Revoke ${t.name}`, onclick: async () => {
          try { notice((await api('DELETE', `token/${enc(t.id)}`)).message); route(true); } catch (e) { notice(e.message); }
        } }, 'Revoke'))))))
      : h('p', { class: 'muted' }, 'No API tokens.')));
}

const auditView = { user: '', kind: '' };

async function auditPage() {
  if (!me || me.role !== 'admin') return page('Audit log', h('p', {}, 'Only admins read the audit log.'));
  const user = h('input', { type: 'search', name: 'user', placeholder: 'any user', value: auditView.user });
  const kind = h('select', { name: 'kind' }, h('option', { value: '' }, 'Everything'),
    ['Host', 'User', 'AuthToken', 'DnsProvider', 'Domain', 'Cert', 'Stream', 'Session'].map((k) => h('option', { value: k, selected: auditView.kind === k }, k)));
  const rows = h('tbody');
  const empty = h('p', { class: 'muted' }, 'Nothing recorded.');
  const load = async () => {
    auditView.user = user.value.trim();
    auditView.kind = kind.value;
    const query = new URLSearchParams({ limit: '200' });
    if (auditView.user) query.set('user', auditView.user);
    if (auditView.kind) query.set('kind', auditView.kind);
    const entries = (await api('GET', `audit?${query}`)).results;
    rows.replaceChildren(...entries.map((e) => h('tr', {},
      h('td', {}, when(e.time)), h('td', {}, e.user), h('td', {}, e.action), h('td', {}, e.kind),
      h('td', {}, e.key || '—'), h('td', {}, e.changes.length ? e.changes.join(', ') : '—'), h('td', { class: 'wide' }, e.address || '—'))));
    empty.hidden = entries.length > 0;
  };
  const filters = h('form', { class: 'grid', 'aria-label': 'Filter the audit log' },
    h('label', {}, 'User', user), h('label', {}, 'Object', kind),
    h('div', {}, h('button', { type: 'submit' }, 'Filter')));
  filters.addEventListener('submit', (event) => { event.preventDefault(); load(); });
  kind.addEventListener('change', load);
  page('Audit log',
    h('section', { class: 'card' },
      h('p', { class: 'muted' }, 'Every change made through the API: who, when, from where, what, and which fields (never their values).'),
      filters,
      h('table', { 'aria-label': 'Audit log' },
        h('thead', {}, h('tr', {}, h('th', {}, 'When'), h('th', {}, 'User'), h('th', {}, 'Action'), h('th', {}, 'Object'),
          h('th', {}, 'Name'), h('th', {}, 'Fields'), h('th', { class: 'wide' }, 'Address'))),
        rows),
      empty));
  await load();
  redraw = load;
}

async function accountPage() {
  const form = h('form', { class: 'grid', 'aria-label': 'Change your password' },
    field('Current password', 'current_password', { type: 'password', required: true, autocomplete: 'current-password' }),
    field('New password', 'password', { type: 'password', required: true, minlength: 8, autocomplete: 'new-password' }),
    field('New password again', 'again', { type: 'password', required: true, minlength: 8, autocomplete: 'new-password' }),
    h('div', {}, h('button', { class: 'primary', type: 'submit' }, 'Change password')));
  onSubmit(form, async (f) => {
    if (f.get('password') !== f.get('again')) {
      throw new ApiError(422, { keys: [{ key: 'again', message: 'the two new passwords differ' }] });
    }
    await api('PUT', 'user/password', { current_password: f.get('current_password'), password: f.get('password') });
    form.reset();
    notice('Password changed. Your other sessions were signed out.');
  });
  page('Account',
    h('section', { class: 'card' }, h('dl', { class: 'kv' },
      h('dt', {}, 'User name'), h('dd', {}, me.username),
      h('dt', {}, 'Role'), h('dd', {}, me.role))),
    h('section', { class: 'card' }, h('h2', {}, 'Change your password'), form));
}

// ---------- routing ----------

const PAGES = { overview: overviewPage, hosts: hostsPage, streams: streamsPage, certs: certsPage, tester: testerPage, dns: dnsPage, users: usersPage, tokens: tokensPage, audit: auditPage, account: accountPage };

function currentPage() {
  const name = (location.hash.replace(/^#\//, '') || 'overview').split('/')[0];
  return PAGES[name] ? name : 'overview';
}

async function route(refresh) {
  if (!me) return;
  const name = currentPage();
  const show = PAGES[name];
  // A live refresh redraws the page's data in place when it can: forms keep what is typed.
  if (refresh && redraw) {
    try { await keepingFocus(redraw); } catch { /* the next change redraws again */ }
    return;
  }
  if (refresh && main().querySelector('form input:focus, form select:focus')) return;
  redraw = null;
  for (const a of document.querySelectorAll('.bar nav a')) {
    if (a.getAttribute('href') === `#/${name}`) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  try {
    if (refresh) await keepingFocus(show);
    else {
      await show();
      main().querySelector('h1').focus();
    }
  } catch (error) {
    if (error.status !== 401) page('Error', h('p', { class: 'error' }, error.message));
  }
}

async function start() {
  if (!localStorage.getItem(TOKEN)) return signInPage();
  try {
    me = await api('GET', 'user/me');
  } catch {
    return;
  }
  document.getElementById('bar').hidden = false;
  document.getElementById('who').textContent = me.username;
  for (const a of document.querySelectorAll('[data-admin]')) a.hidden = me.role !== 'admin';
  follow();
  await route(false);
}

window.addEventListener('hashchange', () => route(false));
document.addEventListener('DOMContentLoaded', () => {
  document.getElementById('signout').addEventListener('click', signOut);
  start();
});
