// A user's path through the UI of a seeded meshlens (`meshlens demo`), in headless Chromium:
// topology → a node's panel → its traces → a trace's waterfall → a span's detail, with a
// screenshot of each page kept in tests/ui/artifacts/; and a hostile span and service name shown
// as text on every page that shows it.
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { REPO, poll, useMeshlens } from './helpers.mjs';

const ARTIFACTS = join(REPO, 'tests', 'ui', 'artifacts');
mkdirSync(ARTIFACTS, { recursive: true });
const env = useMeshlens('demo', '--rate', '30',
  '--ratelimit-dir', join(REPO, 'examples/policy/ratelimit'),
  '--policy-file', join(REPO, 'examples/policy/policy.yaml'));

const shot = (page, name) => page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });

test('topology → node → its traces → a trace → a span', async () => {
  const page = await env.chrome.page();
  await page.setViewportSize({ width: 1400, height: 900 });
  await page.goto(`${env.ml.web}/`);
  await page.waitForURL(/\/topology$/);
  await poll(async () => (await page.locator('.node[data-id="service:demo/work"]').count()) === 1, 'work on the graph');
  await shot(page, 'topology');
  await page.click('.node[data-id="service:demo/work"]');
  assert.equal(await page.textContent('#panel-title'), 'work');
  await shot(page, 'topology-panel');
  await page.click('#panel-traces');
  await page.waitForURL(/\/traces\?service=work$/);
  assert.equal(await page.inputValue('#f-service'), 'work');
  await poll(async () => (await page.locator('#results tbody tr').count()) > 0 || (await page.reload(), false), 'traces of work');
  await shot(page, 'traces');
  await page.locator('#results tbody tr a').first().click();
  await page.waitForURL(/\/trace\/[0-9a-f]{32}$/);
  await poll(async () => /spans/.test(await page.textContent('#trace-summary')), 'the waterfall');
  const services = await page.locator('#rows .row .svc').allTextContents();
  assert.equal(services[0], 'ingress');
  assert.ok(services.includes('work'));
  await page.locator('#rows .row').nth(1).click();
  assert.equal(await page.isVisible('#span-panel'), true);
  assert.match(await page.textContent('#span-title'), /^ingress: GET$/);
  await shot(page, 'trace');
  await page.goto(`${env.ml.web}/services`);
  await shot(page, 'services');
  await page.goto(`${env.ml.web}/service/work`);
  await shot(page, 'service');
  await page.goto(`${env.ml.web}/policy`);
  await shot(page, 'policy');
  assert.deepEqual(page.problems, []);
});

test('a hostile span and service name show as text on every page', async () => {
  const evil = '<img src=x onerror=alert(1)>';
  const now = BigInt(Date.now()) * 1000000n;
  const traceId = 'c0ffee00'.repeat(4);
  const span = (id, kind, parent, service) => ({
    resource: { attributes: [{ key: 'service.name', value: { stringValue: service } }] },
    scopeSpans: [{ spans: [{
      traceId, spanId: id, parentSpanId: parent, name: evil, kind,
      startTimeUnixNano: String(now - 2000000n), endTimeUnixNano: String(now),
      attributes: [{ key: evil, value: { stringValue: evil } }],
      events: [{ name: evil, timeUnixNano: String(now - 1000000n) }],
    }] }],
  });
  const r = await fetch(`${env.ml.otlpHttp}/v1/traces`, { method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ resourceSpans: [span('a1a1a1a1a1a1a1a1', 3, '', 'ingress'), span('b2b2b2b2b2b2b2b2', 2, 'a1a1a1a1a1a1a1a1', evil)] }) });
  assert.equal(r.status, 200);
  const page = await env.chrome.page();
  const pages = [
    [`/topology?window=1m&selected=${encodeURIComponent(`service:${evil}`)}`, async () => {
      const node = page.locator(`.node[data-id="service:${evil}"]`);
      await poll(async () => (await node.count()) === 1, 'the node');
      assert.equal(await node.locator('.node-name title').textContent(), evil);
      await poll(async () => (await page.textContent('#panel-title')) === evil, 'its panel');
    }],
    ['/services?window=1m', async () => assert.ok((await page.locator('tr.service td.name').allTextContents()).includes(evil))],
    [`/service/${encodeURIComponent(evil)}?window=1m`, async () => assert.equal(await page.textContent('#service-name'), evil)],
    [`/traces?service=${encodeURIComponent(evil)}`, async () => {
      assert.match(await page.textContent('#results tbody tr a'), new RegExp(`^ingress: ${evil.replace(/[()]/g, '\\$&')}$`));
    }],
    [`/trace/${traceId}`, async () => {
      await poll(async () => (await page.locator('#rows .row .op').allTextContents()).length === 2, 'the rows');
      assert.deepEqual(await page.locator('#rows .row .op').allTextContents(), [evil, evil]);
      await page.locator('#rows .row').nth(1).click();
      assert.equal(await page.textContent('#span-title'), `${evil}: ${evil}`);
      assert.ok((await page.locator('#span-tags td').allTextContents()).includes(evil));
      assert.match(await page.textContent('#span-logs'), /<img src=x onerror=alert\(1\)>/);
    }],
  ];
  for (const [path, check] of pages) {
    await page.goto(`${env.ml.web}${path}`);
    await check();
    assert.equal(await page.locator('img').count(), 0, path);
  }
  await shot(page, 'xss-trace');
  assert.deepEqual(page.problems, []);
});
