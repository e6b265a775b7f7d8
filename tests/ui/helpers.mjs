// Shared parts of the browser tests: meshlens as a child process on free loopback ports, and
// Debian's Chromium through playwright-core. Everything started is stopped by `stop()`.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { get as httpsGet } from 'node:https';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before } from 'node:test';
import { chromium } from 'playwright-core';

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const BIN = process.env.MESHLENS_BIN || join(REPO, 'target', 'debug', 'meshlens');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

async function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.on('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

/** Polls `fn` until it returns a truthy value, at most `timeoutMs`. */
export async function poll(fn, what, timeoutMs = 20000, everyMs = 100) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, everyMs));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${last}` : ''}`);
}

/** Starts `meshlens <command> ...args` on free loopback ports with a fresh SQLite file. */
export async function startMeshlens(command, ...args) {
  return startMeshlensWith({}, command, ...args);
}

/** GET `url` over HTTPS trusting the PEM CA `ca`; resolves to the status code. */
function httpsStatus(url, ca) {
  return new Promise((ok, fail) => {
    const req = httpsGet(url, { ca }, (res) => { res.resume(); ok(res.statusCode); });
    req.on('error', fail);
    req.setTimeout(2000, () => req.destroy(new Error('timeout')));
  });
}

/** As `startMeshlens`; with `opts.ca` (PEM), the web listener speaks TLS with a certificate
 * from that CA and `ml.web` is an https URL. */
export async function startMeshlensWith(opts, command, ...args) {
  const dir = mkdtempSync(join(tmpdir(), 'meshlens-ui-'));
  const [grpc, http, zipkin, policy, web] = await Promise.all([1, 2, 3, 4, 5].map(freePort));
  const addr = (p) => `127.0.0.1:${p}`;
  const logPath = join(dir, 'meshlens.log');
  const { openSync } = await import('node:fs');
  const log = openSync(logPath, 'w');
  const child = spawn(BIN, [command,
    '--otlp-grpc-addr', addr(grpc), '--otlp-http-addr', addr(http), '--zipkin-addr', addr(zipkin),
    '--policy-addr', addr(policy), '--web-addr', addr(web),
    '--database-url', `sqlite://${join(dir, 'meshlens.db')}`, ...args], { stdio: ['ignore', log, log] });
  const ml = {
    child, dir, logPath,
    web: `${opts.ca ? 'https' : 'http'}://${addr(web)}`, otlpHttp: `http://${addr(http)}`, policy: addr(policy),
    log: () => readFileSync(logPath, 'utf8'),
    async stop() {
      if (child.exitCode !== null) return;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10000);
      await exited;
      clearTimeout(timer);
    },
  };
  await poll(async () => {
    if (child.exitCode !== null) throw new Error(`meshlens exited:\n${ml.log().slice(-3000)}`);
    if (opts.ca) return (await httpsStatus(`${ml.web}/readyz`, opts.ca).catch(() => 0)) === 200;
    const r = await fetch(`${ml.web}/readyz`).catch(() => null);
    return r && r.status === 200;
  }, 'meshlens ready');
  return ml;
}

/** Headless Debian Chromium; pages record console errors and dialogs for the tests to check. */
export async function launch() {
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-background-networking', '--disable-gpu', '--disable-quic',
      '--no-first-run', '--disable-component-update', '--disable-sync'],
  });
  return {
    browser,
    async page() {
      const page = await browser.newPage();
      page.problems = [];
      page.on('console', (m) => { if (m.type() === 'error') page.problems.push(`console: ${m.text()}`); });
      page.on('pageerror', (e) => page.problems.push(`page error: ${e.message}`));
      page.on('dialog', async (d) => { page.problems.push(`dialog: ${d.message()}`); await d.dismiss(); });
      return page;
    },
  };
}

/** For a test file: `meshlens <command> ...args` and a browser, started before its tests and
 * stopped after them (failing if meshlens panicked). Use `env.ml` and `env.chrome` in tests. */
export function useMeshlens(command, ...args) {
  const env = { ml: null, chrome: null };
  before(async () => {
    env.ml = await startMeshlens(command, ...args);
    env.chrome = await launch();
  });
  after(async () => {
    await env.chrome?.browser.close();
    await env.ml?.stop();
    assert.ok(!env.ml || !env.ml.log().includes('panicked at'), 'meshlens panicked');
  });
  return env;
}
