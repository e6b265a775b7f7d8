// UI benchmark: how long the topology takes to draw 50 and 500 services, and the trace view to
// open and scroll traces of 2,000 and 20,000 spans, in headless Debian Chromium. Prints figures
// (medians of several runs) and the 10x-to-1x ratios; it asserts nothing.
//   node tests/ui/bench.mjs [runs]     (MESHLENS_BIN: the binary, default target/debug/meshlens)
import { launch, poll, startMeshlens } from './helpers.mjs';

const RUNS = Number(process.argv[2] || 5);
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const hex = (n, len) => n.toString(16).padStart(len, '0');

async function post(ml, resourceSpans) {
  const r = await fetch(`${ml.otlpHttp}/v1/traces`, { method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ resourceSpans }) });
  if (r.status !== 200) throw new Error(`export: ${r.status} ${await r.text()}`);
}

/** A binary tree of `n` services in namespace `ns`: svc-i calls svc-(2i+1) and svc-(2i+2). */
async function tree(ml, ns, n, seed) {
  const now = BigInt(Date.now()) * 1000000n;
  const by = new Map();
  const push = (svc, span) => { if (!by.has(svc)) by.set(svc, []); by.get(svc).push(span); };
  for (let child = 1; child < n; child++) {
    const parent = Math.floor((child - 1) / 2);
    const id = seed + child;
    const base = { traceId: hex(id, 32), name: 'GET /x', startTimeUnixNano: String(now - 3000000n),
      endTimeUnixNano: String(now), attributes: [{ key: 'http.response.status_code', value: { intValue: '200' } }] };
    push(parent, { ...base, spanId: hex(2 * id, 16), kind: 3 });
    push(child, { ...base, spanId: hex(2 * id + 1, 16), parentSpanId: hex(2 * id, 16), kind: 2 });
  }
  await post(ml, [...by].map(([svc, spans]) => ({
    resource: { attributes: [{ key: 'service.name', value: { stringValue: `${ns}-${svc}` } },
      { key: 'service.namespace', value: { stringValue: ns } }] },
    scopeSpans: [{ spans }],
  })));
}

/** One trace of `n` spans, a 4-ary tree over 8 services. */
async function bigTrace(ml, traceId, n) {
  const now = BigInt(Date.now()) * 1000000n;
  const spanId = (i) => (i + 1).toString(16).padStart(16, '0');
  for (let from = 0; from < n; from += 5000) {
    const by = new Map();
    for (let i = from; i < Math.min(n, from + 5000); i++) {
      const svc = `svc-${i % 8}`;
      if (!by.has(svc)) by.set(svc, []);
      by.get(svc).push({ traceId, spanId: spanId(i), parentSpanId: i ? spanId(Math.floor((i - 1) / 4)) : '',
        name: `op-${i}`, kind: 1, startTimeUnixNano: String(now - 60000000000n + BigInt(i) * 1000n),
        endTimeUnixNano: String(now - 60000000000n + BigInt(i) * 1000n + 500000n) });
    }
    await post(ml, [...by].map(([svc, spans]) => ({
      resource: { attributes: [{ key: 'service.name', value: { stringValue: svc } }] }, scopeSpans: [{ spans }] })));
  }
}

const ml = await startMeshlens('serve');
const chrome = await launch();
try {
  await tree(ml, 'small', 50, 1_000_000);
  await tree(ml, 'big', 500, 2_000_000);
  await bigTrace(ml, 'aa'.repeat(16), 2000);
  await bigTrace(ml, 'bb'.repeat(16), 20000);
  const page = await chrome.page();
  await page.setViewportSize({ width: 1400, height: 900 });
  const results = {};
  for (const [label, ns, n] of [['topology 50 services', 'small', 50], ['topology 500 services', 'big', 500]]) {
    await poll(async () => {
      await page.goto(`${ml.web}/topology?window=1m&namespace=${ns}`);
      await page.waitForSelector('#viewport .node', { timeout: 10000 });
      return (await page.locator('#viewport .node').count()) === n;
    }, `${n} nodes`, 30000, 500);
    const open = [];
    const redraw = [];
    for (let i = 0; i < RUNS; i++) {
      const t0 = Date.now();
      await page.goto(`${ml.web}/topology?window=1m&namespace=${ns}`);
      await page.waitForFunction((want) => document.querySelectorAll('#viewport .node').length === want, n);
      open.push(Date.now() - t0);
      // A redraw (as on every live refresh): layout and SVG, measured in the page.
      redraw.push(await page.evaluate(async () => {
        const t = performance.now();
        document.getElementById('labels').value = 'errors';
        document.getElementById('labels').dispatchEvent(new Event('change'));
        await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
        return performance.now() - t;
      }));
    }
    results[label] = { open_ms: median(open), redraw_ms: Number(median(redraw).toFixed(1)) };
  }
  for (const [label, id, n] of [['trace 2,000 spans', 'aa'.repeat(16), 2000], ['trace 20,000 spans', 'bb'.repeat(16), 20000]]) {
    const open = [];
    const scroll = [];
    for (let i = 0; i < RUNS; i++) {
      const t0 = Date.now();
      await page.goto(`${ml.web}/trace/${id}`);
      await page.waitForFunction((want) => document.getElementById('trace-summary').textContent.includes(`${want} spans`), n, { timeout: 60000 });
      open.push(Date.now() - t0);
      // 50 scroll steps through the whole trace, each drawn before the next.
      scroll.push(await page.evaluate(async () => {
        const rows = document.getElementById('rows');
        const t = performance.now();
        for (let k = 1; k <= 50; k++) {
          rows.scrollTop = (rows.scrollHeight * k) / 50;
          await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
        }
        return (performance.now() - t) / 50;
      }));
    }
    const rowsInPage = await page.locator('#rows .row').count();
    results[label] = { open_ms: median(open), scroll_step_ms: Number(median(scroll).toFixed(1)), rows_in_page: rowsInPage };
  }
  console.log(JSON.stringify(results, null, 2));
  const r = (a, b, k) => (results[a][k] / results[b][k]).toFixed(2);
  console.log(`ratios (10x the size): topology open ${r('topology 500 services', 'topology 50 services', 'open_ms')}, ` +
    `redraw ${r('topology 500 services', 'topology 50 services', 'redraw_ms')}; ` +
    `trace open ${r('trace 20,000 spans', 'trace 2,000 spans', 'open_ms')}, ` +
    `scroll step ${r('trace 20,000 spans', 'trace 2,000 spans', 'scroll_step_ms')}`);
} finally {
  await chrome.browser.close();
  await ml.stop();
}
