// The topology page with Istio's metrics (sent as the OpenTelemetry Collector would, in OTLP
// JSON): the ingress gateway's badge, a TCP edge labelled with its bytes and its panel with
// connections, and ambient waypoints hidden until their toggle draws them.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { poll, useMeshlens } from './helpers.mjs';

const env = useMeshlens('serve');

const attr = (key, value) => ({ key, value: { stringValue: value } });

/** One proxy's delta sums: `[name, value, labels]`. */
function proxy(service, namespace, points) {
  const now = `${BigInt(Date.now()) * 1000000n}`;
  return {
    resource: { attributes: [attr('service.name', service), attr('k8s.namespace.name', namespace)] },
    scopeMetrics: [{
      metrics: points.map(([name, value, labels]) => ({
        name,
        sum: {
          aggregationTemporality: 1,
          isMonotonic: true,
          dataPoints: [{
            asInt: String(value), timeUnixNano: now,
            attributes: Object.entries(labels).map(([k, v]) => attr(k, v)),
          }],
        },
      })),
    }],
  };
}

const mtls = { connection_security_policy: 'mutual_tls' };
const call = (src, srcNs, dst, dstNs, reporter, extra = {}) => ({
  reporter,
  source_workload: src, source_canonical_service: src, source_workload_namespace: srcNs,
  destination_workload: dst, destination_canonical_service: dst, destination_workload_namespace: dstNs,
  destination_service_namespace: dstNs, ...mtls, ...extra,
});

async function send() {
  const body = {
    resourceMetrics: [
      proxy('productpage', 'bookinfo', [
        ['istio_requests_total', 40, call('istio-ingressgateway', 'istio-system', 'productpage', 'bookinfo', 'destination', { response_code: '200' })],
      ]),
      proxy('mongodb', 'bookinfo', [
        ['istio_tcp_received_bytes_total', 3000, call('ratings', 'bookinfo', 'mongodb', 'bookinfo', 'destination')],
        ['istio_tcp_sent_bytes_total', 60000, call('ratings', 'bookinfo', 'mongodb', 'bookinfo', 'destination')],
        ['istio_tcp_connections_opened_total', 3, call('ratings', 'bookinfo', 'mongodb', 'bookinfo', 'destination')],
      ]),
      // Ambient: the waypoint reports the L7 call; ztunnel the hop into the waypoint.
      proxy('waypoint', 'shop', [
        ['istio_requests_total', 25, call('frontend', 'shop', 'cart', 'shop', 'waypoint', { response_code: '200' })],
      ]),
      proxy('ztunnel', 'istio-system', [
        ['istio_tcp_connections_opened_total', 2, call('frontend', 'shop', 'waypoint', 'shop', 'source')],
        ['istio_tcp_connections_opened_total', 2, call('frontend', 'shop', 'waypoint', 'shop', 'destination')],
      ]),
    ],
  };
  const r = await fetch(`${env.ml.otlpHttp}/v1/metrics`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body),
  });
  assert.equal(r.status, 200, await r.text());
}

test('gateways wear a badge, TCP edges show bytes, waypoints appear on demand', async () => {
  await send();
  const page = await env.chrome.page();
  await page.setViewportSize({ width: 1500, height: 900 });
  await page.goto(`${env.ml.web}/topology?window=1m`);
  await poll(async () => (await page.locator('#viewport .edge').count()) >= 3, 'the Istio edges drawn');
  // The ingress gateway's badge.
  const gw = page.locator('.node[data-id="service:istio-system/istio-ingressgateway"]');
  assert.equal(await gw.locator('.node-badge.gateway').count(), 1);
  assert.equal(await page.locator('.node-badge.gateway').count(), 1, 'only the gateway');
  // The TCP edge: bytes a second, not requests; its panel has the connections.
  const tcp = page.locator('.edge.tcp[data-source="service:bookinfo/ratings"][data-target="service:bookinfo/mongodb"]');
  assert.match(await tcp.getAttribute('class'), /\bhealthy\b/);
  assert.match(await tcp.locator('.edge-label').textContent(), /^[\d.]+ (B|kB)\/s$/);
  await tcp.locator('.hit').dispatchEvent('click');
  const rows = Object.fromEntries(await page.locator('#panel-stats tbody tr').evaluateAll(
    (trs) => trs.map((tr) => [tr.cells[0].textContent, tr.cells[1].textContent])));
  assert.equal(rows['connections opened'], '3');
  assert.equal(rows.bytes, '63.0 kB');
  assert.equal(rows.mTLS, '100%');
  assert.equal(rows.requests, undefined, 'no request rows on a TCP edge');
  // Its one version pair carries all its bytes.
  assert.deepEqual(await page.locator('#panel-versions tbody tr td:nth-child(2)').allTextContents(), ['100%']);
  // Waypoints: hidden, then drawn with their hops when asked (and the choice is in the URL).
  assert.equal(await page.locator('.node.waypoint').count(), 0);
  assert.equal(await page.locator('.edge[data-source="service:shop/frontend"][data-target="service:shop/cart"]').count(), 1);
  await page.check('#waypoints');
  await poll(async () => (await page.locator('.node.waypoint').count()) === 1, 'the waypoint drawn');
  assert.match(page.url(), /waypoints=true/);
  assert.equal(await page.locator('.edge[data-target="waypoint:shop/waypoint"]').count(), 1);
  await page.reload();
  await poll(async () => (await page.locator('.node.waypoint').count()) === 1, 'the waypoint kept after a reload');
  assert.equal(await page.isChecked('#waypoints'), true);
  await page.uncheck('#waypoints');
  await poll(async () => (await page.locator('.node.waypoint').count()) === 0, 'the waypoint hidden again');
  assert.deepEqual(page.problems, []);
});
