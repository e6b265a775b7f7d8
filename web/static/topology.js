// meshlens topology: fetches /api/graph, lays the graph out in layers left to right by call
// depth, and draws it as SVG with pan, zoom, selection and live refresh. Every text from the
// data plane goes in through textContent or attribute values, never as markup.
'use strict';

(function () {
  const SVG = 'http://www.w3.org/2000/svg';
  const NODE_W = 190;
  const NODE_H = 46;
  const VERSION_H = 18;
  const COL_GAP = 150;
  const ROW_GAP = 26;
  const REFRESH_MS = 5000;

  const $ = (id) => document.getElementById(id);
  const svg = $('graph');
  const viewport = $('viewport');
  const params = new URLSearchParams(location.search);
  const state = {
    window: params.get('window') || '5m',
    namespace: params.get('namespace') || '',
    service: params.get('service') || '',
    depth: params.get('depth') || '1',
    end: params.get('end') || '',
    labels: params.get('labels') || 'rps',
    waypoints: params.get('waypoints') === 'true',
    selected: params.get('selected') || '',
    graph: null,
    transform: null, // {x, y, k}; null until the first fit
    userMoved: false, // once the user zooms or pans, refreshes keep the view; until then they refit
    timer: null,
    inflight: false,
  };

  function el(name, attrs, parent) {
    const e = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (parent) parent.appendChild(e);
    return e;
  }

  function text(parent, x, y, content, cls) {
    const t = el('text', { x, y, class: cls || '' }, parent);
    t.textContent = content;
    return t;
  }

  // ---------------------------------------------------------------------------------------
  // Layout: layers by longest path from the roots (cycles broken where a DFS meets a node on
  // its stack), then a few barycenter sweeps to reduce crossings, then stacked positions.

  function layout(nodes, edges) {
    const index = new Map(nodes.map((n, i) => [n.id, i]));
    const out = nodes.map(() => []);
    const inc = nodes.map(() => []);
    for (const e of edges) {
      const s = index.get(e.source);
      const t = index.get(e.target);
      if (s === undefined || t === undefined || s === t) continue;
      out[s].push(t);
      inc[t].push(s);
    }
    // Roots first (no callers), then the rest in a stable order: users and ingresses lead.
    const order = nodes.map((_, i) => i).sort((a, b) =>
      (inc[a].length === 0 ? 0 : 1) - (inc[b].length === 0 ? 0 : 1) ||
      kindRank(nodes[a].kind) - kindRank(nodes[b].kind) || nodes[a].id.localeCompare(nodes[b].id));
    const color = new Uint8Array(nodes.length); // 0 new, 1 on stack, 2 done
    const dagOut = nodes.map(() => []);
    for (const root of order) {
      if (color[root]) continue;
      const stack = [[root, 0]];
      color[root] = 1;
      while (stack.length) {
        const top = stack[stack.length - 1];
        const [v, i] = top;
        if (i < out[v].length) {
          top[1]++;
          const w = out[v][i];
          if (color[w] === 1) continue; // a back edge: left out of the layering
          dagOut[v].push(w);
          if (color[w] === 0) {
            color[w] = 1;
            stack.push([w, 0]);
          }
        } else {
          color[v] = 2;
          stack.pop();
        }
      }
    }
    // Longest path layering over the DAG (Kahn).
    const indeg = nodes.map(() => 0);
    dagOut.forEach((ws) => ws.forEach((w) => indeg[w]++));
    const layer = nodes.map(() => 0);
    const queue = order.filter((i) => indeg[i] === 0);
    for (let q = 0; q < queue.length; q++) {
      const v = queue[q];
      for (const w of dagOut[v]) {
        layer[w] = Math.max(layer[w], layer[v] + 1);
        if (--indeg[w] === 0) queue.push(w);
      }
    }
    const layers = [];
    for (const i of order) (layers[layer[i]] ||= []).push(i);
    // Barycenter sweeps: order each layer by the mean position of its neighbours.
    const pos = new Float64Array(nodes.length);
    const place = () => layers.forEach((l) => l.forEach((v, k) => { pos[v] = k; }));
    place();
    for (let sweep = 0; sweep < 6; sweep++) {
      const down = sweep % 2 === 0;
      const seq = down ? layers : [...layers].reverse();
      for (const l of seq) {
        const key = new Map();
        for (const v of l) {
          const ns = down ? inc[v] : out[v];
          key.set(v, ns.length ? ns.reduce((s, w) => s + pos[w], 0) / ns.length : pos[v]);
        }
        l.sort((a, b) => key.get(a) - key.get(b) || a - b);
        l.forEach((v, k) => { pos[v] = k; });
      }
    }
    // Coordinates: each layer a column, boxes stacked with gaps, columns centred vertically.
    const boxes = nodes.map((n) => ({ w: NODE_W, h: nodeHeight(n) }));
    const heights = layers.map((l) => l.reduce((s, v) => s + boxes[v].h + ROW_GAP, -ROW_GAP));
    const tallest = Math.max(0, ...heights);
    layers.forEach((l, c) => {
      let y = (tallest - heights[c]) / 2;
      for (const v of l) {
        boxes[v].x = c * (NODE_W + COL_GAP);
        boxes[v].y = y;
        boxes[v].layer = c;
        y += boxes[v].h + ROW_GAP;
      }
    });
    return { boxes, index, width: layers.length * (NODE_W + COL_GAP) - COL_GAP, height: tallest };
  }

  /** For an edge from box a to box b further on: null when a curve between them
   * crosses no box of the layers in between, else the y of a lane just above or just below those
   * boxes, whichever is nearer. */
  function corridor(boxes, a, b, y1, y2) {
    if (b.layer - a.layer < 2) return null; // adjacent layers: nothing in between
    const between = boxes.filter((c) => c.layer > a.layer && c.layer < b.layer);
    const [lo, hi] = [Math.min(y1, y2) - 12, Math.max(y1, y2) + 12];
    if (!between.some((c) => c.y < hi && c.y + c.h > lo)) return null;
    const above = Math.min(...between.map((c) => c.y)) - 18;
    const below = Math.max(...between.map((c) => c.y + c.h)) + 18;
    const middle = (y1 + y2) / 2;
    return middle - above <= below - middle ? above : below;
  }

  // A service page's URL: the name as a path segment, but for `.` and `..`, which browsers
  // resolve as segments however encoded: those go in the query (as the server's service_href).
  function serviceHref(name, query) {
    if (name === '.' || name === '..') return `/service?name=${name}&${query}`;
    return `/service/${encodeURIComponent(name)}?${query}`;
  }

  function kindRank(kind) {
    return { user: 0, service: 1, external: 2, messaging: 3, database: 4, policy: 5, overflow: 7 }[kind] ?? 6;
  }

  function nodeHeight(n) {
    return NODE_H + (n.versions && n.versions.length > 1 ? n.versions.length * VERSION_H + 4 : 0);
  }

  // ---------------------------------------------------------------------------------------
  // Formatting

  const fmt = {
    rps: (s) => `${s.rps >= 10 ? s.rps.toFixed(0) : s.rps.toFixed(2)} rps`,
    pct: (r) => (r === 0 ? '0%' : r < 0.001 ? '<0.1%' : `${(r * 100).toFixed(1)}%`),
    ms: (v) => (v === undefined || v === null ? '–' : `${v < 10 ? v.toFixed(2) : v.toFixed(0)} ms`),
    bytes: (b) => {
      const units = ['B', 'kB', 'MB', 'GB', 'TB'];
      let i = 0;
      while (b >= 1000 && i < units.length - 1) { b /= 1000; i += 1; }
      return `${b >= 100 || i === 0 ? b.toFixed(0) : b.toFixed(1)} ${units[i]}`;
    },
  };

  /** A TCP edge (Istio's istio_tcp_* metrics): bytes and connections, no requests. */
  const isTcp = (e) => e.connection_type === 'tcp';

  function edgeLabel(e) {
    const s = e.stats;
    if (isTcp(e)) return `${fmt.bytes(s.tcp_sent_bps + s.tcp_received_bps)}/s`;
    if (state.labels === 'errors') return fmt.pct(s.error_ratio);
    if (state.labels === 'p95') return fmt.ms(s.latency_ms && s.latency_ms.p95);
    return fmt.rps(s);
  }

  function badges(s) {
    const out = [];
    if (s.denied + s.rate_limited > 0) out.push(['policy', `⊘ ${s.denied + s.rate_limited}`, `${s.denied} denied, ${s.rate_limited} rate limited`]);
    if (s.retries > 0) out.push(['retry', `↻ ${s.retries}`, `${s.retries} retries`]);
    if (s.overflows + s.ejections > 0) out.push(['breaker', `⚡ ${s.overflows + s.ejections}`, `${s.overflows} circuit-breaker overflows, ${s.ejections} ejections`]);
    return out;
  }

  // ---------------------------------------------------------------------------------------
  // Drawing

  function draw(graph) {
    const { nodes, edges } = graph;
    const L = layout(nodes, edges);
    viewport.replaceChildren();
    const edgeLayer = el('g', { class: 'edges' }, viewport);
    const nodeLayer = el('g', { class: 'nodes' }, viewport);
    for (const e of edges) {
      const a = L.boxes[L.index.get(e.source)];
      const b = L.boxes[L.index.get(e.target)];
      if (!a || !b) continue;
      const g = el('g', { class: `edge ${e.health}${isTcp(e) ? ' tcp' : ''}`, 'data-id': e.id, 'data-source': e.source, 'data-target': e.target, tabindex: 0 }, edgeLayer);
      let d;
      let mid;
      if (a === b) {
        const x = a.x + a.w / 2;
        d = `M ${x - 20} ${a.y} C ${x - 40} ${a.y - 50}, ${x + 40} ${a.y - 50}, ${x + 20} ${a.y}`;
        mid = { x, y: a.y - 38 };
      } else {
        const x1 = a.x + a.w;
        const y1 = a.y + a.h / 2;
        const x2 = b.x;
        const y2 = b.y + b.h / 2;
        const forward = b.layer > a.layer;
        const lane = forward ? corridor(L.boxes, a, b, y1, y2) : null;
        if (lane !== null) {
          // An edge that skips layers goes around the boxes in between, through a lane above or
          // below them, instead of straight through them.
          d = `M ${x1} ${y1} C ${x1 + 40} ${y1}, ${x1 + 40} ${lane}, ${x1 + 80} ${lane} L ${x2 - 80} ${lane} ` +
            `C ${x2 - 40} ${lane}, ${x2 - 40} ${y2}, ${x2} ${y2}`;
          mid = { x: (x1 + x2) / 2, y: lane };
        } else {
          const dx = forward ? Math.max(40, (x2 - x1) / 2) : 90;
          const dy = forward ? 0 : Math.max(a.h, b.h) + 30;
          const [c1, c2] = [[x1 + dx, y1 + dy], [x2 - dx, y2 + dy]];
          d = `M ${x1} ${y1} C ${c1[0]} ${c1[1]}, ${c2[0]} ${c2[1]}, ${x2} ${y2}`;
          mid = { x: (x1 + 3 * c1[0] + 3 * c2[0] + x2) / 8, y: (y1 + 3 * c1[1] + 3 * c2[1] + y2) / 8 };
        }
      }
      el('path', { d, class: 'hit' }, g);
      el('path', { d, class: 'line', 'marker-end': 'url(#arrow)' }, g);
      const label = text(g, mid.x, mid.y - 4, edgeLabel(e), 'edge-label');
      label.setAttribute('text-anchor', 'middle');
      let bx = mid.x - 30;
      for (const [cls, t, title] of badges(e.stats)) {
        const b = text(g, bx, mid.y + 12, t, `badge ${cls}`);
        el('title', {}, b).textContent = title;
        bx += 36;
      }
      const tip = el('title', {}, g);
      tip.textContent = `${e.source} → ${e.target}`;
    }
    for (const n of nodes) {
      const box = L.boxes[L.index.get(n.id)];
      const g = el('g', { class: `node ${n.kind} ${n.health}`, 'data-id': n.id, transform: `translate(${box.x},${box.y})`, tabindex: 0 }, nodeLayer);
      drawShape(g, n, box);
      const name = text(g, 12, 20, truncate(n.name, n.gateway ? 19 : 24), 'node-name');
      el('title', {}, name).textContent = n.name;
      if (n.gateway) {
        // Kiali's gateway badge: where traffic enters (or leaves) the mesh.
        const b = text(g, box.w - 12, 20, n.gateway === 'egress' ? 'GW ⇥' : '⇥ GW', 'node-badge gateway');
        b.setAttribute('text-anchor', 'end');
        el('title', {}, b).textContent = `Istio ${n.gateway} gateway`;
      }
      const sub = n.kind === 'service'
        ? `${n.namespace || ''}${n.namespace ? ' · ' : ''}${fmt.rps(n.stats)} · ${fmt.pct(n.stats.error_ratio)}`
        : `${n.kind}${n.namespace ? ` · ${n.namespace}` : ''}`;
      text(g, 12, 37, truncate(sub, 30), 'node-sub');
      if (n.versions && n.versions.length > 1) {
        n.versions.forEach((v, i) => {
          const y = NODE_H + i * VERSION_H;
          const vg = el('g', { class: `version ${v.health}`, 'data-version': v.version }, g);
          el('rect', { x: 10, y, width: NODE_W - 20, height: VERSION_H - 3, rx: 3, class: 'version-bg' }, vg);
          el('rect', { x: 10, y, width: Math.max(2, (NODE_W - 20) * v.share), height: VERSION_H - 3, rx: 3, class: 'version-bar' }, vg);
          text(vg, 16, y + 11, `${truncate(v.version, 14)}  ${Math.round(v.share * 100)}%`, 'version-label');
        });
      }
    }
    const count = `${nodes.length} nodes, ${edges.length} edges`;
    $('status').textContent = state.end ? `${count}, window ending ${new Date(graph.generated_at).toLocaleString()}` : `${count}, as of ${new Date(graph.generated_at).toLocaleTimeString()}`;
    highlight(); // first: an open panel narrows the graph the fit is for
    if (!state.transform || !state.userMoved) fit(L);
    applyTransform();
    svg.dataset.width = String(L.width);
    svg.dataset.height = String(L.height);
  }

  function drawShape(g, n, box) {
    if (n.kind === 'database') {
      el('path', { class: 'shape', d: `M 0 8 A ${box.w / 2} 8 0 0 1 ${box.w} 8 V ${box.h - 8} A ${box.w / 2} 8 0 0 1 0 ${box.h - 8} Z` }, g);
      el('path', { class: 'shape-line', d: `M 0 8 A ${box.w / 2} 8 0 0 0 ${box.w} 8` }, g);
    } else if (n.kind === 'user') {
      el('rect', { class: 'shape', width: box.w, height: box.h, rx: box.h / 2 }, g);
    } else {
      el('rect', { class: 'shape', width: box.w, height: box.h, rx: n.kind === 'service' ? 6 : 0 }, g);
    }
    el('rect', { class: 'health-strip', width: 5, height: box.h, rx: 2 }, g);
  }

  function truncate(s, n) {
    return s.length > n ? `${s.slice(0, n - 1)}…` : s;
  }

  // ---------------------------------------------------------------------------------------
  // Pan and zoom

  function fit(L) {
    const r = svg.getBoundingClientRect();
    const pad = 40;
    const w = Math.max(L.width, 1) + 2 * pad;
    const h = Math.max(L.height, 1) + 2 * pad + 60;
    const k = Math.min(1.2, Math.max(0.05, Math.min(r.width / w, r.height / h)));
    state.transform = { k, x: (r.width - L.width * k) / 2, y: (r.height - L.height * k) / 2 + 20 };
  }

  function applyTransform() {
    const t = state.transform;
    viewport.setAttribute('transform', `translate(${t.x},${t.y}) scale(${t.k})`);
    svg.dataset.zoom = t.k.toFixed(4);
  }

  svg.addEventListener('wheel', (ev) => {
    ev.preventDefault();
    const t = state.transform;
    if (!t) return;
    const r = svg.getBoundingClientRect();
    const px = ev.clientX - r.left;
    const py = ev.clientY - r.top;
    const k = Math.min(4, Math.max(0.03, t.k * Math.exp(-ev.deltaY * 0.0015)));
    t.x = px - ((px - t.x) * k) / t.k;
    t.y = py - ((py - t.y) * k) / t.k;
    t.k = k;
    state.userMoved = true;
    applyTransform();
  }, { passive: false });

  let drag = null;
  svg.addEventListener('pointerdown', (ev) => {
    if (ev.target.closest('.node, .edge')) return;
    drag = { x: ev.clientX, y: ev.clientY, moved: false };
    svg.setPointerCapture(ev.pointerId);
  });
  svg.addEventListener('pointermove', (ev) => {
    if (!drag || !state.transform) return;
    state.transform.x += ev.clientX - drag.x;
    state.transform.y += ev.clientY - drag.y;
    drag.moved ||= Math.abs(ev.clientX - drag.x) + Math.abs(ev.clientY - drag.y) > 2;
    if (drag.moved) state.userMoved = true;
    drag.x = ev.clientX;
    drag.y = ev.clientY;
    applyTransform();
  });
  svg.addEventListener('pointerup', (ev) => {
    if (drag && !drag.moved && !ev.target.closest('.node, .edge')) select('');
    drag = null;
  });

  $('fit').addEventListener('click', () => {
    state.transform = null;
    state.userMoved = false;
    if (state.graph) draw(state.graph);
  });

  // ---------------------------------------------------------------------------------------
  // Selection and the side panel

  svg.addEventListener('click', (ev) => {
    const target = ev.target.closest('.node, .edge');
    if (target) select(target.dataset.id);
  });
  svg.addEventListener('keydown', (ev) => {
    const target = ev.target.closest('.node, .edge');
    if (target && (ev.key === 'Enter' || ev.key === ' ')) select(target.dataset.id);
  });
  $('panel-close').addEventListener('click', () => select(''));

  function select(id) {
    state.selected = id;
    syncUrl();
    // Until the user zooms or pans, the view refits when the panel opens or closes.
    if (!state.userMoved && state.graph) draw(state.graph);
    else highlight();
  }

  function highlight() {
    for (const g of viewport.querySelectorAll('.selected')) g.classList.remove('selected');
    const panel = $('panel');
    const graph = state.graph;
    const id = state.selected;
    const node = graph && graph.nodes.find((n) => n.id === id);
    const edge = !node && graph && graph.edges.find((e) => e.id === id);
    if (!node && !edge) {
      panel.hidden = true;
      return;
    }
    for (const g of viewport.querySelectorAll('.node, .edge')) {
      if (g.dataset.id === id) g.classList.add('selected');
    }
    panel.hidden = false;
    if (node) {
      $('panel-title').textContent = node.name;
      $('panel-sub').textContent = node.kind === 'overflow'
        ? `calls on edges beyond the graph's caps ([graph] max_edges, max_nodes), last ${graph.window}`
        : `${node.gateway ? `${node.gateway} gateway` : node.kind}${node.namespace ? ` in ${node.namespace}` : ''} · ${node.health} · calls received, last ${graph.window}`;
      statsTable(node.stats, [['calls out', node.outbound_requests]]);
      charts('node', node.id);
      versionsTable(node.versions.map((v) => [v.version, v.share, v.stats, v.health]));
      const traces = $('panel-traces');
      traces.hidden = node.kind !== 'service';
      traces.href = `/traces?service=${encodeURIComponent(node.name)}`;
      traces.textContent = `Traces of ${node.name}`;
      const service = $('panel-service');
      service.hidden = node.kind !== 'service';
      service.href = serviceHref(node.name, `window=${state.window}${node.namespace ? `&namespace=${encodeURIComponent(node.namespace)}` : ''}`);
    } else {
      const name = (nid) => (graph.nodes.find((n) => n.id === nid) || { name: nid }).name;
      $('panel-title').textContent = `${name(edge.source)} → ${name(edge.target)}`;
      $('panel-sub').textContent = `${edge.connection_type} · ${edge.health} · last ${graph.window}`;
      // Each source's own count, where a number above may come from (docs/api.md, `sources`).
      const src = edge.sources;
      statsTable(edge.stats, isTcp(edge) ? [] : [['requests in spans', src.spans.requests], ['requests in proxy metrics', src.metrics.requests],
        ['refused by meshlens policy', src.policy.denied + src.policy.rate_limited]], isTcp(edge));
      charts('edge', edge.id);
      // A version pair's share of the edge: of its requests, or of its bytes on a TCP edge.
      const weight = (s) => (isTcp(edge) ? s.tcp_sent_bps + s.tcp_received_bps : s.requests);
      const total = weight(edge.stats) || 1;
      versionsTable(edge.versions.map((v) => [`${v.source_version || '–'} → ${v.target_version || '–'}`, weight(v.stats) / total, v.stats, '']));
      $('panel-service').hidden = true;
      const traces = $('panel-traces');
      const server = graph.nodes.find((n) => n.id === edge.target);
      traces.hidden = !server || server.kind !== 'service';
      if (server) {
        traces.href = `/traces?service=${encodeURIComponent(server.name)}`;
        traces.textContent = `Traces of ${server.name}`;
      }
    }
  }

  // ---------------------------------------------------------------------------------------
  // Small charts: the selected node's or edge's last hour, per stored minute.

  const histories = new Map(); // id -> {at, body}

  async function charts(kind, id) {
    const box = $('panel-charts');
    if (box.dataset.for !== id) {
      box.replaceChildren();
      box.dataset.for = id;
    }
    const cached = histories.get(id);
    let body = cached && Date.now() - cached.at < 60000 ? cached.body : null;
    if (!body) {
      try {
        const r = await fetch(`/api/graph/history?${kind}=${encodeURIComponent(id)}&minutes=60`);
        if (!r.ok) return;
        body = await r.json();
        histories.set(id, { at: Date.now(), body });
      } catch (e) {
        return;
      }
    }
    if (state.selected !== id) return; // the selection moved on while this loaded
    box.replaceChildren();
    if (!body.minutes.length) {
      const p = document.createElement('p');
      p.className = 'muted';
      p.textContent = 'No stored minutes yet: the graph stores each minute as it ends.';
      box.appendChild(p);
      return;
    }
    const series = [
      ['requests/s', (m) => m.requests / 60, (v) => v.toFixed(2), 'rps'],
      ['errors', (m) => (m.requests ? m.failures / m.requests : null), (v) => fmt.pct(v), 'errors'],
      ['p95', (m) => m.p95_ms, (v) => fmt.ms(v), 'p95'],
    ];
    for (const [title, pick, label, cls] of series) {
      const values = body.minutes.map((m) => [m.at, pick(m)]).filter(([, v]) => v !== null && v !== undefined);
      const fig = document.createElement('figure');
      fig.className = `spark ${cls}`;
      fig.dataset.chart = cls;
      const cap = document.createElement('figcaption');
      const max = Math.max(0, ...values.map(([, v]) => v));
      cap.textContent = values.length ? `${title}: ${label(values[values.length - 1][1])} now, max ${label(max)}` : `${title}: –`;
      const W = 300;
      const H = 36;
      const chart = el('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none' });
      const span = Math.max(1, body.to - 60 - body.from);
      const pts = values.map(([at, v]) => [((at - body.from) / span) * W, H - (max > 0 ? (v / max) * (H - 3) : 0)]);
      el('polyline', { points: pts.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(' '), class: 'series' }, chart);
      for (const [x, y] of pts) el('circle', { cx: x.toFixed(1), cy: y.toFixed(1), r: 1.6, class: 'dot' }, chart);
      fig.append(cap, chart);
      box.appendChild(fig);
    }
  }

  function statsTable(s, extra, tcp) {
    const latencyFrom = { spans: 'spans', metrics: 'proxy histograms' }[s.latency_source] || '–';
    const rows = tcp ? [
      ['received', `${fmt.bytes(s.tcp_received_bps)}/s`], ['sent', `${fmt.bytes(s.tcp_sent_bps)}/s`],
      ['bytes', fmt.bytes(s.bytes)], ['connections opened', s.tcp_connections_opened],
      ['connections closed', s.tcp_connections_closed],
      ['mTLS', s.mtls_pct === null ? '–' : `${s.mtls_pct.toFixed(0)}%`], ...extra,
    ] : [
      ['requests', s.requests], ['requests/s', s.rps.toFixed(3)], ['errors', `${s.failures} (${fmt.pct(s.error_ratio)})`],
      ['HTTP 4xx', s.http_4xx], ['HTTP 5xx', s.http_5xx], ['gRPC errors', s.grpc_errors],
      ['denied', s.denied], ['rate limited', s.rate_limited], ['retries', s.retries],
      ['overflows', s.overflows], ['ejections', s.ejections],
      ['mTLS', s.mtls_pct === null ? '–' : `${s.mtls_pct.toFixed(0)}%`],
      ['p50', fmt.ms(s.latency_ms && s.latency_ms.p50)], ['p95', fmt.ms(s.latency_ms && s.latency_ms.p95)],
      ['p99', fmt.ms(s.latency_ms && s.latency_ms.p99)], ['latency from', latencyFrom],
      ['response flags', Object.entries(s.response_flags || {}).map(([f, n]) => `${f} ${n}`).join(', ') || '–'], ...extra,
    ];
    const body = $('panel-stats').tBodies[0];
    body.replaceChildren();
    for (const [k, v] of rows) {
      const tr = body.insertRow();
      tr.insertCell().textContent = k;
      const td = tr.insertCell();
      td.className = 'num';
      td.textContent = String(v);
    }
  }

  function versionsTable(rows) {
    const body = $('panel-versions').tBodies[0];
    body.replaceChildren();
    $('panel-versions-title').hidden = $('panel-versions').hidden = rows.length === 0;
    for (const [name, share, s, health] of rows) {
      const tr = body.insertRow();
      tr.insertCell().textContent = name;
      for (const v of [`${Math.round(share * 100)}%`, s.rps.toFixed(2), fmt.pct(s.error_ratio), fmt.ms(s.latency_ms && s.latency_ms.p95)]) {
        const td = tr.insertCell();
        td.className = 'num';
        td.textContent = v;
      }
      const h = tr.insertCell();
      if (health) {
        const span = document.createElement('span');
        span.className = `health ${health}`;
        span.textContent = health;
        h.appendChild(span);
      }
    }
  }

  // ---------------------------------------------------------------------------------------
  // Controls, URL state and refresh

  function syncUrl() {
    const p = new URLSearchParams();
    for (const k of ['window', 'namespace', 'service', 'depth', 'end', 'labels', 'waypoints', 'selected']) {
      if (state[k] && !(k === 'window' && state[k] === '5m') && !(k === 'depth' && state[k] === '1') && !(k === 'labels' && state[k] === 'rps')) p.set(k, state[k]);
    }
    const q = p.toString();
    history.replaceState(null, '', q ? `?${q}` : location.pathname);
    for (const a of $('windows').querySelectorAll('a')) {
      if (a.dataset.window === state.window) a.setAttribute('aria-current', 'true');
      else a.removeAttribute('aria-current');
    }
  }

  async function refresh() {
    if (state.inflight) return;
    state.inflight = true;
    const p = new URLSearchParams({ window: state.window });
    if (state.namespace) p.set('namespace', state.namespace);
    if (state.service) {
      p.set('service', state.service);
      p.set('depth', state.depth || '1');
    }
    if (state.waypoints) p.set('waypoints', 'true');
    if (state.end) p.set('end', String(Math.floor(new Date(state.end).getTime() / 1000)));
    try {
      const r = await fetch(`/api/graph?${p}`);
      const body = await r.json();
      if (!r.ok) {
        $('status').textContent = (body.errors && body.errors[0] && body.errors[0].msg) || `error ${r.status}`;
        return;
      }
      state.graph = body;
      fillFilters(body);
      draw(body);
    } catch (e) {
      $('status').textContent = `cannot reach meshlens: ${e.message}`;
    } finally {
      state.inflight = false;
    }
  }

  function fillFilters(graph) {
    const ns = $('namespace');
    const have = new Set([...ns.options].map((o) => o.value));
    for (const n of graph.nodes) {
      if (n.namespace && !have.has(n.namespace)) {
        have.add(n.namespace);
        const o = document.createElement('option');
        o.value = n.namespace;
        o.textContent = n.namespace;
        ns.appendChild(o);
      }
    }
    ns.value = state.namespace;
    const list = $('service-names');
    const names = [...new Set(graph.nodes.filter((n) => n.kind === 'service').map((n) => n.name))].sort();
    if (list.options.length !== names.length) {
      list.replaceChildren(...names.map((n) => {
        const o = document.createElement('option');
        o.value = n;
        return o;
      }));
    }
  }

  function schedule() {
    clearInterval(state.timer);
    state.timer = null;
    if ($('live').checked && !state.end) state.timer = setInterval(refresh, REFRESH_MS);
  }

  function changed(reset) {
    if (reset) {
      state.transform = null;
      state.userMoved = false;
    }
    syncUrl();
    schedule();
    refresh();
  }

  $('windows').addEventListener('click', (ev) => {
    const a = ev.target.closest('a[data-window]');
    if (!a) return;
    ev.preventDefault();
    state.window = a.dataset.window;
    changed(false);
  });
  $('namespace').addEventListener('change', (ev) => { state.namespace = ev.target.value; changed(true); });
  $('service').addEventListener('change', (ev) => { state.service = ev.target.value.trim(); changed(true); });
  $('waypoints').checked = state.waypoints;
  $('waypoints').addEventListener('change', (ev) => { state.waypoints = ev.target.checked; changed(true); });
  $('depth').addEventListener('change', (ev) => { state.depth = ev.target.value; changed(true); });
  $('end').addEventListener('change', (ev) => { state.end = ev.target.value; changed(false); });
  $('labels').addEventListener('change', (ev) => {
    state.labels = ev.target.value;
    syncUrl();
    if (state.graph) draw(state.graph);
  });
  $('live').addEventListener('change', schedule);

  $('service').value = state.service;
  $('depth').value = state.depth;
  $('end').value = state.end;
  $('labels').value = state.labels;
  syncUrl();
  schedule();
  refresh();
})();
