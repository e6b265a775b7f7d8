// The web UI over HTTPS with a token login, in headless Chromium: refused without a login, a
// wrong token refused, the right one gives a session cookie (HttpOnly, Secure, SameSite=Strict)
// that every page then accepts, and the logout ends it. Certificates are made here by openssl.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { launch, poll, startMeshlensWith } from './helpers.mjs';

const TOKEN = 'ui-viewer-token-0123456789abcdef';

function openssl(dir, ...args) {
  const r = spawnSync('openssl', args, { cwd: dir, encoding: 'utf8' });
  assert.equal(r.status, 0, `openssl ${args.join(' ')}: ${r.stderr}`);
}

/** A CA and a server certificate for 127.0.0.1 and localhost, in `dir`. */
function makeCerts(dir) {
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  openssl(dir, 'req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '2',
    '-subj', '/CN=meshlens ui CA', '-addext', 'basicConstraints=critical,CA:TRUE',
    '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
  writeFileSync(join(dir, 'server.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n');
  openssl(dir, 'req', ...ec, '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=meshlens');
  openssl(dir, 'x509', '-req', '-in', 'server.csr', '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial',
    '-days', '2', '-out', 'server.crt', '-extfile', 'server.ext');
}

const env = { ml: null, chrome: null };
before(async () => {
  const dir = mkdtempSync(join(tmpdir(), 'meshlens-ui-tls-'));
  makeCerts(dir);
  writeFileSync(join(dir, 'web-tokens'), `${TOKEN} viewer\n`);
  // The demo feeds itself over plaintext OTLP/gRPC; every other listener speaks TLS.
  writeFileSync(join(dir, 'meshlens.toml'), `[tls]
cert = "${join(dir, 'server.crt')}"
key = "${join(dir, 'server.key')}"
[tls.otlp_grpc]
enabled = false
[auth]
web_tokens_file = "${join(dir, 'web-tokens')}"
`);
  env.ml = await startMeshlensWith({ ca: readFileSync(join(dir, 'ca.crt')) }, 'demo', '--rate', '20',
    '--config', join(dir, 'meshlens.toml'));
  env.chrome = await launch();
});
after(async () => {
  await env.chrome?.browser.close();
  await env.ml?.stop();
  assert.ok(!env.ml || !env.ml.log().includes('panicked at'), 'meshlens panicked');
});

test('over HTTPS: no page without a login; a token login gives a Secure HttpOnly SameSite cookie', async () => {
  assert.match(env.ml.web, /^https:/);
  const context = await env.chrome.browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(e.message));

  // Refused without a login: 401, and the page is the login form.
  const refused = await page.goto(`${env.ml.web}/services`);
  assert.equal(refused.status(), 401);
  assert.equal(await page.locator('form.login').count(), 1);
  const api = await page.request.get(`${env.ml.web}/api/graph`);
  assert.equal(api.status(), 401);

  // A wrong token: refused, with a message.
  await page.fill('input[name="token"]', 'not-the-token-00000000');
  const wrong = await Promise.all([page.waitForNavigation(), page.click('button[type="submit"]')]);
  assert.equal(wrong[0].status(), 401);
  assert.match(await page.locator('p.error').textContent(), /not accepted/);

  // The right one: back to the page first asked for.
  await page.fill('input[name="token"]', TOKEN);
  await Promise.all([page.waitForURL(/\/services$/), page.click('button[type="submit"]')]);
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === '__Host-meshlens_session');
  assert.ok(session, JSON.stringify(cookies));
  assert.equal(session.httpOnly, true);
  assert.equal(session.secure, true);
  assert.equal(session.sameSite, 'Strict');
  assert.equal(await page.evaluate(() => document.cookie), '', 'scripts cannot read the session');

  // Every page loads with it, the demo's services included.
  await poll(async () => {
    await page.goto(`${env.ml.web}/services?window=1m`);
    const names = await page.locator('tr.service td.name').allTextContents();
    return names.includes('work');
  }, 'work on the services page');
  for (const path of ['/topology', '/traces', '/policy']) {
    const r = await page.goto(`${env.ml.web}${path}`);
    assert.equal(r.status(), 200, path);
  }
  assert.equal((await page.request.get(`${env.ml.web}/api/graph`)).status(), 200);

  // Every page names the role and has a Sign out button, which ends the session.
  assert.equal(await page.locator('header .who .role').textContent(), 'viewer');
  await Promise.all([page.waitForURL(/\/login$/), page.click('#sign-out')]);
  assert.equal(await page.locator('form.login').count(), 1);
  assert.ok(!(await context.cookies()).some((c) => c.name === '__Host-meshlens_session'), 'cookie removed');
  const again = await page.goto(`${env.ml.web}/services`);
  assert.equal(again.status(), 401);
  assert.deepEqual(problems, []);
  await context.close();
});
