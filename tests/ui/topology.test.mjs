// The topology page in headless Chromium against `meshlens demo`: the layered layout (left to
// right by call depth, no overlapping boxes), versions inside their service, edge labels and
// their switch, the side panel, live refresh that keeps zoom and selection, and 500 services.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { poll, useMeshlens } from './helpers.mjs';

const env = useMeshlens('demo', '--rate', '40');

/** Every node's box in graph coordinates, by id. */
async function boxes(page) {
  return page.locator('#viewport .node').evaluateAll((gs) => Object.fromEntries(gs.map((g) => {
    const m = g.getAttribute('transform').match(/translate\(([-\d.e]+),([-\d.e]+)\)/);
    const b = g.getBBox();
    return [g.dataset.id, { x: Number(m[1]), y: Number(m[2]), w: b.width, h: b.height }];
  })));
}

function overlaps(all) {
  const list = Object.entries(all);
  const out = [];
  for (let i = 0; i < list.length; i++) {
    for (let j = i + 1; j < list.length; j++) {
      const [a, A] = list[i];
      const [b, B] = list[j];
      if (A.x < B.x + B.w && B.x < A.x + A.w && A.y < B.y + B.h && B.y < A.y + A.h) out.push(`${a} / ${b}`);
    }
  }
  return out;
}

const DEMO = ['user:user', 'service:demo/ingress', 'service:demo/work', 'service:demo/meet', 'database:orders'];

async function openDemo(page) {
  await page.goto(`${env.ml.web}/topology?window=1m`);
  await poll(async () => (await page.locator('#viewport .node').count()) >= DEMO.length, 'the demo graph drawn');
  await poll(async () => (await page.locator('#viewport .edge').count()) >= 4, 'the demo edges drawn');
  // The first refresh may come before the canary's first call: wait for both versions.
  await poll(async () => {
    if ((await page.locator('.node[data-id="service:demo/work"] .version').count()) >= 2) return true;
    await page.reload();
    await page.waitForSelector('#viewport .node', { timeout: 10000 });
    return false;
  }, 'work v1 and v2 drawn', 20000, 500);
}

test('the demo mesh is laid out left to right by call depth, without overlaps', async () => {
  const page = await env.chrome.page();
  await openDemo(page);
  const b = await boxes(page);
  assert.deepEqual(Object.keys(b).sort(), [...DEMO].sort());
  const xs = DEMO.map((id) => b[id].x);
  for (let i = 1; i < xs.length; i++) assert.ok(xs[i] > xs[i - 1], `${DEMO[i]} right of ${DEMO[i - 1]}: ${xs}`);
  assert.deepEqual(overlaps(b), []);
  // work's versions inside its box, with their traffic split.
  const versions = await page.locator('.node[data-id="service:demo/work"] .version').evaluateAll(
    (gs) => gs.map((g) => [g.dataset.version, g.textContent]));
  assert.deepEqual(versions.map((v) => v[0]), ['v1', 'v2']);
  assert.ok(versions.every((v) => /\d+%$/.test(v[1])), JSON.stringify(versions));
  // The database is drawn as a cylinder, the service as a rounded box.
  assert.equal(await page.locator('.node.database path.shape').count(), 1);
  assert.equal(await page.locator('.node.service rect.shape').count(), 3);
  // v2's failures colour the ingress → work edge.
  const edge = page.locator('.edge[data-source="service:demo/ingress"][data-target="service:demo/work"]');
  await poll(async () => {
    if (/\b(degraded|failure)\b/.test(await edge.getAttribute('class'))) return true;
    await page.reload();
    await page.waitForSelector('#viewport .edge', { timeout: 10000 });
    return false;
  }, "v2's first failure on ingress → work", 20000, 500);
  assert.match(await edge.locator('.edge-label').textContent(), /^[\d.]+ rps$/);
  await page.selectOption('#labels', 'errors');
  assert.match(await edge.locator('.edge-label').textContent(), /^[\d.]+%$/);
  await page.selectOption('#labels', 'p95');
  assert.match(await edge.locator('.edge-label').textContent(), /^[\d.]+ ms$/);
  assert.match(page.url(), /labels=p95/);
  assert.deepEqual(page.problems, []);
});

test('clicking a node opens its panel; refresh keeps zoom and selection', async () => {
  const page = await env.chrome.page();
  await page.setViewportSize({ width: 1400, height: 900 });
  await openDemo(page);
  await page.click('.node[data-id="service:demo/work"]');
  assert.equal(await page.isVisible('#panel'), true);
  assert.equal(await page.textContent('#panel-title'), 'work');
  assert.deepEqual(await page.locator('#panel-versions tbody tr td:first-child').allTextContents(), ['v1', 'v2']);
  assert.equal(await page.getAttribute('#panel-traces', 'href'), '/traces?service=work');
  assert.match(page.url(), /selected=service%3Ademo%2Fwork/);
  // The last hour's charts: a new meshlens has stored no whole minute yet, and says so.
  await poll(async () => /No stored minutes yet/.test(await page.textContent('#panel-charts')), 'the history answer');
  assert.match(await page.getAttribute('#panel-service', 'href'), /^\/service\/work\?window=1m&namespace=demo$/);
  // Zoom in with the wheel over the graph, then wait for a live refresh.
  const box = await page.locator('#graph').boundingBox();
  await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
  await page.mouse.wheel(0, -400);
  const zoom = await page.getAttribute('#graph', 'data-zoom');
  const before = await page.textContent('#status');
  await poll(async () => (await page.textContent('#status')) !== before, 'a live refresh', 15000);
  assert.equal(await page.getAttribute('#graph', 'data-zoom'), zoom);
  assert.equal(await page.locator('.node.selected').getAttribute('data-id'), 'service:demo/work');
  assert.equal(await page.textContent('#panel-title'), 'work');
  // An edge's panel.
  await page.locator('.edge[data-source="service:demo/work"][data-target="service:demo/meet"] .hit').dispatchEvent('click');
  assert.equal(await page.textContent('#panel-title'), 'work → meet');
  // The demo sends spans only: every request in spans, none in proxy metrics.
  const rows = Object.fromEntries(await page.locator('#panel-stats tbody tr').evaluateAll(
    (trs) => trs.map((tr) => [tr.cells[0].textContent, tr.cells[1].textContent])));
  assert.equal(rows['requests in proxy metrics'], '0');
  assert.equal(rows['requests in spans'], rows.requests);
  assert.ok(Number(rows.requests) > 0, JSON.stringify(rows));
  await page.click('#panel-close');
  assert.equal(await page.isVisible('#panel'), false);
  assert.deepEqual(page.problems, []);
});

test('500 services are all drawn, in layers, without overlaps', async () => {
  // A binary tree of calls in namespace big: svc-i calls svc-(2i+1) and svc-(2i+2).
  const now = BigInt(Date.now()) * 1000000n;
  const byService = new Map();
  const push = (svc, span) => { if (!byService.has(svc)) byService.set(svc, []); byService.get(svc).push(span); };
  const hex = (n, len) => n.toString(16).padStart(len, '0');
  let n = 0;
  for (let child = 1; child < 500; child++) {
    const parent = Math.floor((child - 1) / 2);
    n++;
    const trace = hex(n, 32);
    const base = { traceId: trace, name: 'GET /x', startTimeUnixNano: String(now - 3000000n), endTimeUnixNano: String(now),
      attributes: [{ key: 'http.response.status_code', value: { intValue: '200' } }] };
    push(parent, { ...base, spanId: hex(2 * n, 16), kind: 3 });
    push(child, { ...base, spanId: hex(2 * n + 1, 16), parentSpanId: hex(2 * n, 16), kind: 2 });
  }
  const resourceSpans = [...byService].map(([svc, spans]) => ({
    resource: { attributes: [{ key: 'service.name', value: { stringValue: `svc-${svc}` } },
      { key: 'service.namespace', value: { stringValue: 'big' } }] },
    scopeSpans: [{ spans }],
  }));
  const r = await fetch(`${env.ml.otlpHttp}/v1/traces`, { method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ resourceSpans }) });
  assert.equal(r.status, 200, await r.text());
  const page = await env.chrome.page();
  await page.setViewportSize({ width: 1400, height: 900 });
  await poll(async () => {
    await page.goto(`${env.ml.web}/topology?window=1m&namespace=big`);
    await page.waitForSelector('#viewport .node', { timeout: 10000 });
    return (await page.locator('#viewport .node').count()) === 500;
  }, '500 nodes', 30000, 500);
  assert.equal(await page.locator('#viewport .edge').count(), 499);
  const b = await boxes(page);
  assert.deepEqual(overlaps(b), []);
  // Depth d of the tree is layer d: 2^d services share a column.
  const columns = new Map();
  for (const [, v] of Object.entries(b)) columns.set(v.x, (columns.get(v.x) || 0) + 1);
  assert.deepEqual([...columns.entries()].sort((a, c) => a[0] - c[0]).map((c) => c[1]), [1, 2, 4, 8, 16, 32, 64, 128, 245]);
  // The whole graph fits the view at first (zoomed out), and the page answers a click.
  const zoom = Number(await page.getAttribute('#graph', 'data-zoom'));
  assert.ok(zoom < 1, `zoom ${zoom}, ${await page.getAttribute('#graph', 'data-width')} x ${await page.getAttribute('#graph', 'data-height')}, ${JSON.stringify(await page.locator('#graph').boundingBox())}`);
  await page.click('.node[data-id="service:big/svc-0"]');
  assert.equal(await page.textContent('#panel-title'), 'svc-0');
  assert.deepEqual(page.problems, []);
});

test('an edge that skips a layer goes around the boxes in between', async () => {
  // In namespace skip: a calls b, b calls c, and a calls c too (as every sidecar calls the
  // policy server): a → c spans two layers, with b in between on the same row.
  const now = BigInt(Date.now()) * 1000000n;
  const hex = (n, len) => n.toString(16).padStart(len, '0');
  const spans = new Map();
  const call = (n, from, to) => {
    const base = { traceId: hex(1000 + n, 32), name: 'GET /x', startTimeUnixNano: String(now - 2000000n),
      endTimeUnixNano: String(now), attributes: [{ key: 'http.response.status_code', value: { intValue: '200' } }] };
    for (const [svc, span] of [[from, { ...base, spanId: hex(2 * n, 16), kind: 3 }],
      [to, { ...base, spanId: hex(2 * n + 1, 16), parentSpanId: hex(2 * n, 16), kind: 2 }]]) {
      if (!spans.has(svc)) spans.set(svc, []);
      spans.get(svc).push(span);
    }
  };
  call(1, 'a', 'b');
  call(2, 'b', 'c');
  call(3, 'a', 'c');
  const resourceSpans = [...spans].map(([svc, list]) => ({
    resource: { attributes: [{ key: 'service.name', value: { stringValue: svc } },
      { key: 'service.namespace', value: { stringValue: 'skip' } }] },
    scopeSpans: [{ spans: list }],
  }));
  const r = await fetch(`${env.ml.otlpHttp}/v1/traces`, { method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ resourceSpans }) });
  assert.equal(r.status, 200, await r.text());
  const page = await env.chrome.page();
  await poll(async () => {
    await page.goto(`${env.ml.web}/topology?window=1m&namespace=skip`);
    await page.waitForSelector('#viewport .node', { timeout: 10000 });
    return (await page.locator('#viewport .edge').count()) === 3;
  }, 'a, b and c with three edges', 20000, 500);
  const b = await boxes(page);
  assert.ok(b['service:skip/a'].x < b['service:skip/b'].x && b['service:skip/b'].x < b['service:skip/c'].x);
  const box = b['service:skip/b'];
  const points = await page.locator('.edge[data-source="service:skip/a"][data-target="service:skip/c"] path.line')
    .evaluate((path) => {
      const len = path.getTotalLength();
      return Array.from({ length: 201 }, (_, i) => { const p = path.getPointAtLength((len * i) / 200); return [p.x, p.y]; });
    });
  const inside = points.filter(([x, y]) => x > box.x && x < box.x + box.w && y > box.y && y < box.y + box.h);
  assert.deepEqual(inside, [], `a → c crosses b's box ${JSON.stringify(box)}`);
  // It still starts at a and ends at c.
  assert.ok(Math.abs(points[0][0] - (b['service:skip/a'].x + b['service:skip/a'].w)) < 2, JSON.stringify(points[0]));
  assert.ok(Math.abs(points[200][0] - b['service:skip/c'].x) < 2, JSON.stringify(points[200]));
  assert.deepEqual(page.problems, []);
});
