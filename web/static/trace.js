// meshlens trace timeline: fetches one trace from the Jaeger API and draws its waterfall. Only
// the rows on screen exist in the page (rows are a fixed height and placed by index), so a trace
// of tens of thousands of spans scrolls like a small one. Data-plane text goes in through
// textContent only.
'use strict';

(function () {
  const ROW_H = 24;
  const OVERSCAN = 12;
  const $ = (id) => document.getElementById(id);
  const traceId = $('trace').dataset.traceId;
  const rowsEl = $('rows');
  const spacer = $('spacer');

  const state = {
    spans: [], // in start order, each with children, depth, parent
    byId: new Map(),
    roots: [],
    visible: [], // the rows the tree shows, collapsed subtrees left out
    collapsed: new Set(),
    selected: null,
    start: 0,
    total: 1,
    processes: {},
  };

  /** The same colour classes the server uses (FNV-1a of the name, mod 12). */
  function colorClass(name) {
    let h = 2166136261;
    for (const b of new TextEncoder().encode(name)) h = Math.imul(h ^ b, 16777619) >>> 0;
    return `svc-c${h % 12}`;
  }

  function duration(us) {
    if (us < 1) return `${Math.round(us * 1000)} ns`;
    if (us < 1000) return `${us.toFixed(us < 10 ? 2 : 0)} µs`;
    if (us < 1e6) return `${(us / 1000).toFixed(2)} ms`;
    return `${(us / 1e6).toFixed(2)} s`;
  }

  function tagValue(tags, key) {
    const t = (tags || []).find((x) => x.key === key);
    return t ? t.value : undefined;
  }

  function build(trace) {
    state.processes = trace.processes || {};
    const spans = trace.spans.slice().sort((a, b) => a.startTime - b.startTime);
    state.byId = new Map(spans.map((s) => [s.spanID, s]));
    let end = -Infinity;
    state.start = Infinity;
    for (const s of spans) {
      state.start = Math.min(state.start, s.startTime);
      end = Math.max(end, s.startTime + s.duration);
    }
    state.total = Math.max(1, end - state.start);
    for (const s of spans) {
      s.children = [];
      s.service = (state.processes[s.processID] || {}).serviceName || '?';
      const err = tagValue(s.tags, 'error');
      s.error = err === true || err === 'true' || tagValue(s.tags, 'otel.status_code') === 'ERROR';
    }
    state.roots = [];
    for (const s of spans) {
      const ref = (s.references || []).find((r) => r.spanID !== s.spanID && state.byId.has(r.spanID));
      s.parent = ref ? state.byId.get(ref.spanID) : null;
      if (s.parent) s.parent.children.push(s);
      else state.roots.push(s);
    }
    // Depths without recursion (traces can be deep).
    const stack = state.roots.map((r) => [r, 0]);
    while (stack.length) {
      const [s, d] = stack.pop();
      s.depth = d;
      for (const c of s.children) stack.push([c, d + 1]);
    }
    state.spans = spans;
    markCritical();
  }

  /** The critical path: from each root, the child that finished last, then the one that finished
   * last before that child started, and so on, down the tree. */
  function markCritical() {
    for (const s of state.spans) s.critical = false;
    const work = state.roots.map((r) => [r, r.startTime + r.duration]);
    while (work.length) {
      const [s, bound] = work.pop();
      s.critical = true;
      let t = Math.min(bound, s.startTime + s.duration);
      const kids = s.children.slice().sort((a, b) => (b.startTime + b.duration) - (a.startTime + a.duration));
      for (const c of kids) {
        if (c.startTime < t) {
          work.push([c, t]);
          t = c.startTime;
        }
      }
    }
  }

  function flatten() {
    const out = [];
    const stack = state.roots.slice().reverse();
    while (stack.length) {
      const s = stack.pop();
      out.push(s);
      if (!state.collapsed.has(s.spanID)) {
        for (let i = s.children.length - 1; i >= 0; i--) stack.push(s.children[i]);
      }
    }
    state.visible = out;
    spacer.style.height = `${out.length * ROW_H}px`;
  }

  let drawn = '';

  /** Draws the rows in view (and a margin); `force` after the tree or the selection changed. */
  function renderRows(force) {
    // The browser may clamp scrollTop only at the next layout: after a collapse from far down,
    // the old offset would draw no row at all for a frame.
    const top = Math.min(rowsEl.scrollTop, Math.max(0, state.visible.length * ROW_H - rowsEl.clientHeight));
    const first = Math.max(0, Math.floor(top / ROW_H) - OVERSCAN);
    const last = Math.min(state.visible.length, Math.ceil((top + rowsEl.clientHeight) / ROW_H) + OVERSCAN);
    const critical = $('critical').checked;
    const key = `${first}:${last}`;
    if (force !== true && key === drawn) return;
    drawn = key;
    const rows = [];
    for (let i = first; i < last; i++) {
      const s = state.visible[i];
      const row = document.createElement('div');
      row.className = 'row';
      if (s.error) row.classList.add('failed');
      if (critical && s.critical) row.classList.add('critical');
      if (state.selected === s) row.classList.add('selected');
      row.style.top = `${i * ROW_H}px`;
      row.dataset.span = s.spanID;
      const name = document.createElement('div');
      name.className = 'name';
      name.style.paddingLeft = `${6 + Math.min(s.depth, 40) * 14}px`;
      const toggle = document.createElement('button');
      toggle.type = 'button';
      toggle.className = s.children.length ? 'toggle' : 'toggle leaf';
      toggle.textContent = state.collapsed.has(s.spanID) ? '▸' : '▾';
      toggle.setAttribute('aria-label', state.collapsed.has(s.spanID) ? 'expand' : 'collapse');
      const svc = document.createElement('span');
      svc.className = `svc ${colorClass(s.service)}`;
      svc.textContent = s.service;
      const op = document.createElement('span');
      op.className = 'op';
      op.textContent = s.operationName;
      op.title = s.operationName;
      name.append(toggle, svc, op);
      const lane = document.createElement('div');
      lane.className = 'lane';
      const bar = document.createElement('div');
      bar.className = `span-bar ${colorClass(s.service)}`;
      const left = ((s.startTime - state.start) / state.total) * 100;
      const width = (s.duration / state.total) * 100;
      bar.style.left = `${left}%`;
      bar.style.width = `${Math.max(width, 0.1)}%`;
      const dur = document.createElement('span');
      dur.className = 'dur';
      dur.textContent = duration(s.duration);
      if (left + width > 80) dur.style.right = `${100 - left + 0.5}%`;
      else dur.style.left = `${left + width + 0.5}%`;
      lane.append(bar, dur);
      row.append(name, lane);
      rows.push(row);
    }
    rowsEl.replaceChildren(spacer, ...rows);
  }

  function ruler() {
    const el = $('ruler-time');
    el.replaceChildren();
    for (let i = 0; i <= 4; i++) {
      const tick = document.createElement('div');
      tick.className = 'tick';
      tick.style.left = `${i * 25}%`;
      if (i === 4) tick.classList.add('end');
      tick.textContent = duration((state.total * i) / 4);
      el.appendChild(tick);
    }
  }

  function legend() {
    const counts = new Map();
    for (const s of state.spans) counts.set(s.service, (counts.get(s.service) || 0) + 1);
    const el = $('legend');
    el.replaceChildren(...[...counts].sort().map(([svc, n]) => {
      const chip = document.createElement('span');
      chip.className = `chip ${colorClass(svc)}`;
      chip.textContent = `${svc} ${n}`;
      return chip;
    }));
  }

  function kv(tableId, pairs) {
    const body = $(tableId).tBodies[0];
    body.replaceChildren();
    for (const [k, v] of pairs) {
      const tr = body.insertRow();
      tr.insertCell().textContent = k;
      tr.insertCell().textContent = typeof v === 'string' ? v : JSON.stringify(v);
    }
    return pairs.length;
  }

  function showSpan(s) {
    state.selected = s;
    const panel = $('span-panel');
    if (!s) {
      panel.hidden = true;
      renderRows(true);
      return;
    }
    panel.hidden = false;
    $('span-title').textContent = `${s.service}: ${s.operationName}`;
    $('span-sub').textContent = `${duration(s.duration)} at +${duration(s.startTime - state.start)} · span ${s.spanID}${s.error ? ' · error' : ''}`;
    const warnings = $('span-warnings');
    warnings.replaceChildren(...(s.warnings || []).map((w) => {
      const li = document.createElement('li');
      li.textContent = w;
      return li;
    }));
    warnings.hidden = !(s.warnings || []).length;
    kv('span-tags', (s.tags || []).map((t) => [t.key, t.value]));
    kv('span-process', ((state.processes[s.processID] || {}).tags || []).map((t) => [t.key, t.value]));
    const logs = (s.logs || []).map((l) => [`+${duration(l.timestamp - state.start)}`, (l.fields || []).map((f) => `${f.key}=${typeof f.value === 'string' ? f.value : JSON.stringify(f.value)}`).join(' ')]);
    $('span-logs-title').hidden = $('span-logs').hidden = kv('span-logs', logs) === 0;
    const refs = (s.references || []).map((r) => [r.refType, `${r.traceID} / ${r.spanID}`]);
    $('span-refs-title').hidden = $('span-refs').hidden = kv('span-refs', refs) === 0;
    renderRows(true);
  }

  rowsEl.addEventListener('scroll', () => requestAnimationFrame(() => renderRows(false)));
  window.addEventListener('resize', () => requestAnimationFrame(() => renderRows(true)));
  rowsEl.addEventListener('click', (ev) => {
    const row = ev.target.closest('.row');
    if (!row) return;
    const s = state.byId.get(row.dataset.span);
    if (ev.target.closest('.toggle')) {
      if (state.collapsed.has(s.spanID)) state.collapsed.delete(s.spanID);
      else state.collapsed.add(s.spanID);
      flatten();
      renderRows(true);
      return;
    }
    showSpan(s);
  });
  $('span-close').addEventListener('click', () => showSpan(null));
  $('collapse-all').addEventListener('click', () => {
    for (const s of state.spans) if (s.children.length) state.collapsed.add(s.spanID);
    flatten();
    renderRows(true);
  });
  $('expand-all').addEventListener('click', () => {
    state.collapsed.clear();
    flatten();
    renderRows(true);
  });
  $('critical').addEventListener('change', () => renderRows(true));

  fetch(`/api/traces/${encodeURIComponent(traceId)}`)
    .then(async (r) => {
      const body = await r.json();
      if (!r.ok || !body.data || !body.data.length) {
        throw new Error((body.errors && body.errors[0] && body.errors[0].msg) || `error ${r.status}`);
      }
      return body.data[0];
    })
    .then((trace) => {
      build(trace);
      const services = new Set(state.spans.map((s) => s.service)).size;
      const errors = state.spans.filter((s) => s.error).length;
      const root = state.roots[0];
      $('trace-summary').textContent = `${root ? `${root.service}: ${root.operationName} · ` : ''}${duration(state.total)} · ${state.spans.length} spans · ${services} services · ${errors} errors`;
      legend();
      ruler();
      flatten();
      renderRows(true);
    })
    .catch((e) => {
      $('trace-summary').textContent = `Cannot show this trace: ${e.message}`;
    });
})();
