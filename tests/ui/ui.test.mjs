// The web UI in headless Chromium against a running `meshlens demo`: the services table, the
// policy page with real denials, escaping of hostile data-plane text, and the CSP holding.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { test } from 'node:test';
import { BIN, REPO, poll, useMeshlens } from './helpers.mjs';

const env = useMeshlens('demo', '--rate', '40',
  '--ratelimit-dir', join(REPO, 'examples/policy/ratelimit'),
  '--policy-file', join(REPO, 'examples/policy/policy.yaml'));

test('services page: the demo services with RED and both versions of work', async () => {
  const page = await env.chrome.page();
  const rows = await poll(async () => {
    await page.goto(`${env.ml.web}/services?window=1m`);
    const names = await page.locator('tr.service td.name').allTextContents();
    return ['ingress', 'meet', 'work'].every((n) => names.includes(n)) ? names : null;
  }, 'ingress, work and meet on the services page');
  assert.deepEqual(rows, ['ingress', 'meet', 'work']);
  const versions = await page.locator('tr.version[data-service="work"]').evaluateAll(
    (trs) => trs.map((tr) => tr.dataset.version));
  assert.deepEqual(versions, ['v1', 'v2']);
  // v2 fails one call in five: once it has had a few calls, its health badge is red, v1's green.
  const v2 = page.locator('tr.version[data-service="work"][data-version="v2"] .health');
  const v1 = page.locator('tr.version[data-service="work"][data-version="v1"] .health');
  await poll(async () => (await v2.textContent()) === 'failure' || (await page.reload(), false), 'v2 failing', 20000, 500);
  assert.equal(await v1.textContent(), 'healthy');
  const red = await v2.evaluate((el) => getComputedStyle(el).backgroundColor);
  assert.equal(red, 'rgb(210, 52, 61)', 'the stylesheet loaded and colours failure red');
  // The window selector switches windows.
  await page.click('.windows a:text("15m")');
  assert.match(page.url(), /window=15m$/);
  assert.equal(await page.locator('.windows a[aria-current="true"]').textContent(), '15m');
  assert.deepEqual(page.problems, []);
});

test('a service page: RED, versions, callers, callees and operations', async () => {
  const page = await env.chrome.page();
  await page.goto(`${env.ml.web}/services?window=1m`);
  await page.click('tr.service[data-service="work"] td.name a');
  await page.waitForURL(/\/service\/work\?window=1m&namespace=demo$/);
  assert.equal(await page.textContent('#service-name'), 'work');
  assert.match(await page.textContent('#stat-rps'), /^\d+\.\d\d$/);
  assert.deepEqual(await page.locator('#versions tbody tr').evaluateAll((trs) => trs.map((t) => t.dataset.version)), ['v1', 'v2']);
  assert.deepEqual(await page.locator('#upstreams tbody td:first-child').allTextContents(), ['ingress']);
  assert.deepEqual(await page.locator('#downstreams tbody td:first-child').allTextContents(), ['meet']);
  assert.ok((await page.locator('#operations tbody td:first-child').allTextContents()).includes('GET /orders/{id}'));
  // A callee's link leads to its page.
  await page.click('#downstreams a');
  await page.waitForURL(/\/service\/meet$/);
  assert.deepEqual(await page.locator('#downstreams tbody td:first-child').allTextContents(), ['orders database']);
  assert.deepEqual(page.problems, []);
});

test('policy page: config, quotas and the denials checks just got', async () => {
  // Ten ext_authz checks from ingress to work for one user: its 1-a-minute quota refuses 9.
  // The quota's window is the wall-clock minute: half a second of checks that crossed into the
  // next minute would pass twice, so they start at least two seconds before it.
  const untilMinute = 60000 - (Date.now() % 60000);
  if (untilMinute < 2000) await new Promise((resolve) => setTimeout(resolve, untilMinute + 100));
  const checkgen = join(BIN, '..', 'meshlens-checkgen');
  const run = spawnSync(checkgen, ['--api', 'authz', '--endpoint', env.ml.policy, '--keys', '1',
    '--rate', '20', '--warmup-seconds', '0', '--seconds', '0.5'], { timeout: 30000 });
  assert.equal(run.status, 0, String(run.stderr));
  const page = await env.chrome.page();
  await page.goto(`${env.ml.web}/policy`);
  assert.equal(await page.locator('#reload-status .health').textContent(), 'ok');
  assert.deepEqual(await page.locator('#quotas tbody td:first-child').allTextContents(), ['per-user']);
  // The quota's use: the user's first check passed (near: at 80% of 1 a minute or more), the
  // rest were over it.
  const quota = await page.locator('#quotas tbody tr').first().locator('td').allTextContents();
  assert.equal(quota[4], 'destination=work');
  assert.equal(quota[5], 'source.service + destination.service + header:x-user');
  assert.deepEqual([quota[6], quota[7]], ['0', '1'], quota.join('|'));
  assert.ok(Number(quota[8]) >= 5, quota.join('|'));
  assert.deepEqual(await page.locator('#rules tbody td:first-child').allTextContents(),
    ['no-admin', 'ingress-to-work', 'watch-deletes']);
  assert.deepEqual(await page.locator('#rules tbody .action').allTextContents(), ['DENY', 'ALLOW', 'AUDIT']);
  const limits = await page.locator('#limits tbody td:nth-child(2) code').allTextContents();
  assert.deepEqual(limits, ['edge.source_cluster.destination_cluster', 'edge.user', 'edge.user_scraper']);
  const denial = page.locator('#denials tbody tr').first();
  const cells = await denial.locator('td').allTextContents();
  assert.equal(cells[1], 'ext_authz');
  assert.equal(cells[2], 'ingress');
  assert.equal(cells[3], 'work');
  assert.equal(cells[5], '429');
  assert.equal(cells[6], 'per-user');
  assert.deepEqual(page.problems, []);
});

test('hostile service names are shown as text, never run', async () => {
  const now = BigInt(Date.now()) * 1000000n;
  const evil = '<img src=x onerror="alert(document.domain)">';
  const span = (id, kind, parent, service) => ({
    resource: { attributes: [{ key: 'service.name', value: { stringValue: service } }] },
    scopeSpans: [{ spans: [{
      traceId: '0af7651916cd43dd8448eb211c80319c', spanId: id, parentSpanId: parent, name: 'GET /x',
      kind, startTimeUnixNano: String(now - 2000000n), endTimeUnixNano: String(now),
      attributes: [{ key: 'http.response.status_code', value: { intValue: '200' } }],
    }] }],
  });
  const r = await fetch(`${env.ml.otlpHttp}/v1/traces`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ resourceSpans: [
      span('b7ad6b7169203331', 3, '', 'ingress'),
      span('b7ad6b7169203332', 2, 'b7ad6b7169203331', evil),
    ] }),
  });
  assert.equal(r.status, 200);
  const page = await env.chrome.page();
  await poll(async () => {
    await page.goto(`${env.ml.web}/services?window=1m`);
    return (await page.locator('tr.service td.name').allTextContents()).includes(evil);
  }, 'the hostile name on the services page');
  assert.equal(await page.locator('img').count(), 0);
  assert.deepEqual(page.problems, []);
});

test('the Content-Security-Policy blocks injected inline script', async () => {
  const page = await env.chrome.page();
  await page.goto(`${env.ml.web}/services`);
  // An inline script added to the page is refused by the policy, so it never runs.
  const ran = await page.evaluate(() => {
    window.injected = false;
    const s = document.createElement('script');
    s.textContent = 'window.injected = true';
    document.body.appendChild(s);
    return window.injected;
  });
  assert.equal(ran, false);
  assert.ok(page.problems.some((p) => p.includes('Content Security Policy')), page.problems.join('\n'));
});
