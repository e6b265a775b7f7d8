// Trace search and the trace timeline in headless Chromium: search the demo's traces, open one,
// read a span; a 20,000-span trace keeps only the rows on screen in the page.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { poll, useMeshlens } from './helpers.mjs';

const env = useMeshlens('demo', '--rate', '20');

test('search the demo traces and open one', async () => {
  const page = await env.chrome.page();
  await poll(async () => {
    await page.goto(`${env.ml.web}/traces`);
    return (await page.locator('#f-service option').allTextContents()).includes('work');
  }, 'work among the services');
  await page.selectOption('#f-service', 'work');
  await page.fill('#f-tags', 'error=true');
  await page.click('form.search button[type=submit]');
  const rows = page.locator('#results tbody tr');
  await poll(async () => (await rows.count()) > 0 || (await page.reload(), false), 'failed traces of work');
  // Every result failed (error=true), went through work, and shows its services and a bar.
  for (const tr of await rows.all()) {
    assert.match(await tr.getAttribute('class'), /has-errors/);
    const chips = await tr.locator('.chip').allTextContents();
    assert.ok(chips.some((c) => c.startsWith('work ')), chips.join());
    assert.equal(await tr.locator('svg.durbar rect').count(), 1);
  }
  assert.match(page.url(), /service=work/);
  assert.equal(await page.inputValue('#f-tags'), 'error=true');
  // The operations of the chosen service are offered.
  assert.ok((await page.locator('#f-operation option').allTextContents()).includes('GET /orders/{id}'));

  await rows.first().locator('a').click();
  await page.waitForURL(/\/trace\/[0-9a-f]{32}$/);
  await poll(async () => /spans/.test(await page.textContent('#trace-summary')), 'the trace loaded');
  assert.match(await page.textContent('#trace-summary'), /ingress: GET \/orders\/\{id\} · .* · 3 spans · 2 services · [1-9]\d* errors/);
  const legend = await page.locator('#legend .chip').allTextContents();
  assert.deepEqual(legend, ['ingress 2', 'work 1']);
  const rowsShown = page.locator('#rows .row');
  assert.equal(await rowsShown.count(), 3);
  // Rows stack without overlapping.
  const tops = await rowsShown.evaluateAll((rs) => rs.map((r) => [r.getBoundingClientRect().top, r.getBoundingClientRect().height]));
  for (let i = 1; i < tops.length; i++) assert.ok(tops[i][0] >= tops[i - 1][0] + tops[i - 1][1] - 0.5, JSON.stringify(tops));
  assert.ok((await page.locator('#rows .row.failed').count()) >= 1);
  assert.ok((await page.locator('#rows .row.critical').count()) >= 1);
  // A span's details.
  await rowsShown.nth(2).click();
  assert.equal(await page.isVisible('#span-panel'), true);
  assert.equal(await page.textContent('#span-title'), 'work: GET /orders/{id}');
  const tags = await page.locator('#span-tags td:first-child').allTextContents();
  assert.ok(tags.includes('http.route') && tags.includes('http.response.status_code'), tags.join());
  const resource = await page.locator('#span-process td:first-child').allTextContents();
  assert.ok(resource.includes('service.version'), resource.join());
  // Collapsing the root hides its subtree.
  await rowsShown.first().locator('.toggle').click();
  assert.equal(await page.locator('#rows .row').count(), 1);
  await page.click('#expand-all');
  assert.equal(await page.locator('#rows .row').count(), 3);
  assert.deepEqual(page.problems, []);
});

test('bad search input gets a clear error', async () => {
  const page = await env.chrome.page();
  const r = await page.goto(`${env.ml.web}/traces?tagtext=novalue`);
  assert.equal(r.status(), 400);
  assert.match(await page.textContent('#search-error'), /tags: expected key=value/);
  const bad = await page.goto(`${env.ml.web}/trace/not-a-trace`);
  assert.equal(bad.status(), 400);
  assert.match(await page.textContent('main'), /malformed trace id/);
  const missing = await env.chrome.page();
  await missing.goto(`${env.ml.web}/trace/${'ab'.repeat(16)}`);
  await poll(async () => /Cannot show this trace: trace not found/.test(await missing.textContent('#trace-summary')), 'the not-found message');
});

test('a 20,000-span trace keeps only the rows on screen', async () => {
  // One trace, a 4-ary tree: span i's parent is (i-1)/4; sent in four exports of 5,000.
  const N = 20000;
  const now = BigInt(Date.now()) * 1000000n;
  const traceId = 'feedbeef'.repeat(4);
  const spanId = (i) => (i + 1).toString(16).padStart(16, '0');
  for (let from = 0; from < N; from += 5000) {
    const spans = [];
    for (let i = from; i < from + 5000; i++) {
      spans.push({ traceId, spanId: spanId(i), parentSpanId: i ? spanId(Math.floor((i - 1) / 4)) : '',
        name: `op-${i}`, kind: 1, startTimeUnixNano: String(now - 60000000000n + BigInt(i) * 1000n),
        endTimeUnixNano: String(now - 60000000000n + BigInt(i) * 1000n + 500000n) });
    }
    const r = await fetch(`${env.ml.otlpHttp}/v1/traces`, { method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ resourceSpans: [{ resource: { attributes: [
        { key: 'service.name', value: { stringValue: 'bulk' } }] }, scopeSpans: [{ spans }] }] }) });
    assert.equal(r.status, 200, await r.text());
  }
  const page = await env.chrome.page();
  await page.setViewportSize({ width: 1400, height: 900 });
  await page.goto(`${env.ml.web}/trace/${traceId}`);
  await poll(async () => /20000 spans/.test(await page.textContent('#trace-summary')), 'the big trace loaded', 60000, 200);
  const inPage = await page.locator('#rows .row').count();
  assert.ok(inPage > 10 && inPage < 150, `${inPage} rows in the page`);
  assert.equal(await page.locator('#spacer').evaluate((e) => e.style.height), `${N * 24}px`);
  // Scrolled to the end: the last span in tree order (the chain of last children) is shown.
  await page.locator('#rows').evaluate((e) => { e.scrollTop = e.scrollHeight; });
  await poll(async () => (await page.locator('#rows .row .op').allTextContents()).includes('op-5460'), 'the last row');
  assert.ok((await page.locator('#rows .row').count()) < 150);
  // Collapsed from far down the list: the root row is drawn at once, not after the browser
  // clamps the scroll offset.
  await page.click('#collapse-all');
  assert.equal(await page.locator('#rows .row').count(), 1);
  assert.deepEqual(await page.locator('#rows .row .op').allTextContents(), ['op-0']);
  await page.click('#expand-all');
  assert.equal(await page.locator('#spacer').evaluate((e) => e.style.height), `${N * 24}px`);
  assert.deepEqual(page.problems, []);
});
