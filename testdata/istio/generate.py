#!/usr/bin/env python3
"""Generate Istio-shaped Prometheus fixtures and the graph each must give.

stdlib only.  Run:  python3 testdata/istio/generate.py
Writes, for every scenario, <scenario>/scrape-0.prom, <scenario>/scrape-1.prom
and <scenario>/expected.json, then validates them:

  1. a strict text-format (0.0.4) parser re-reads every .prom file
     (TYPE before samples, families contiguous, no duplicate series,
     histogram buckets ascending + cumulative, +Inf == _count, ...);
  2. scrape-1 - scrape-0 is non-negative for every counter / bucket and the
     two scrapes hold the same series;
  3. the graph is re-derived *from the parsed files* with the rules written in
     README.md and compared with expected.json (which is built from the traffic
     tables below).  Any mismatch aborts with a non-zero exit code.
  4. if `promtool` is on PATH, `promtool check metrics` is run on each file and
     its output printed (it lints names, so it does print warnings).

Everything is derived from the TRAFFIC tables; edit them, not the outputs.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
INTERVAL_S = 15
# Scrape times (only used in a comment line of each file).
T0_MS = 1735689600000  # 2025-01-01T00:00:00Z
T1_MS = T0_MS + INTERVAL_S * 1000

# Envoy's default histogram bounds; Istio uses them for istio_request_duration_milliseconds
# AND for istio_request_bytes / istio_response_bytes (no per-metric override by default).
BOUNDS = [0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000,
          60000, 300000, 600000, 1800000, 3600000]
NB = len(BOUNDS) + 1  # + the +Inf bucket


def le_str(b):
    return ("%g" % b) if b != int(b) else str(int(b))


LE = [le_str(b) for b in BOUNDS] + ["+Inf"]

K8S_HASH_ALPHABET = set("bcdfghjklmnpqrstvwxz2456789")

# --------------------------------------------------------------------------------------
# Histogram profiles: weights per bucket upper bound (ms or bytes).  Counts are spread
# over the buckets with a deterministic largest-remainder split.
# --------------------------------------------------------------------------------------
PROFILES = {
    # latency (ms), as seen by the server-side proxy (destination / waypoint)
    "lat_instant": {0.5: 90, 1: 10},
    "lat_fast": {1: 10, 5: 55, 10: 25, 25: 8, 50: 2},
    "lat_reviews": {5: 10, 10: 30, 25: 40, 50: 15, 100: 5},
    "lat_productpage": {25: 15, 50: 45, 100: 30, 250: 8, 500: 2},
    "lat_external": {100: 20, 250: 60, 500: 20},
    "lat_timeout": {5000: 100},
    "lat_connfail": {1: 40, 5: 60},
    "lat_cart": {5: 20, 10: 45, 25: 30, 50: 5},
    "lat_payments": {10: 10, 25: 30, 50: 35, 100: 20, 250: 5},
    # sizes (bytes)
    "bytes_empty": {0.5: 100},
    "bytes_small": {25: 100},
    "bytes_json": {500: 85, 1000: 15},
    "bytes_html": {5000: 30, 10000: 70},
    "bytes_cart_req": {250: 100},
    "bytes_cart_resp": {1000: 60, 2500: 40},
}


def profile_weights(name):
    w = [0.0] * NB
    for ub, weight in PROFILES[name].items():
        w[BOUNDS.index(ub)] += weight
    return w


def distribute(n, weights):
    """Split integer n over buckets proportionally to weights (largest remainder)."""
    tot = float(sum(weights))
    raw = [n * w / tot for w in weights]
    out = [int(x) for x in raw]
    rest = n - sum(out)
    order = sorted(range(NB), key=lambda i: (-(raw[i] - out[i]), i))
    for i in order[:rest]:
        out[i] += 1
    return out


def shift_later(counts, frac=0.3):
    """Client-side view of the same requests: part of each bucket moves one bucket up
    (the client also pays the network hop).  Count is preserved."""
    out = list(counts)
    for i in range(NB - 2, -1, -1):
        m = int(counts[i] * frac)
        out[i] -= m
        out[i + 1] += m
    return out


def rep_value(i, kind):
    """Representative observed value for bucket i (integers, as Envoy records them)."""
    if i == 0:
        return 0
    lo = BOUNDS[i - 1]
    hi = BOUNDS[i] if i < len(BOUNDS) else BOUNDS[-1] * 1.5
    return int(round(lo + 0.55 * (hi - lo)))


def hist_sum(counts, kind):
    return sum(c * rep_value(i, kind) for i, c in enumerate(counts))


def baseline_factor(key):
    """Deterministic 'age' of a series: scrape-0 = factor * per-interval traffic + jitter."""
    h = zlib.crc32(key.encode())
    return 180 + h % 900, h % 7


# --------------------------------------------------------------------------------------
# Workloads, pods, services
# --------------------------------------------------------------------------------------
class Workload:
    def __init__(self, workload, ns, app, version, sa, canonical_rev=None, pod=None,
                 ip=None, node=None, pod_labels=None, zone=None, region=None):
        self.workload = workload
        self.ns = ns
        self.app = app
        self.version = version  # None -> pod has no version label
        self.cs = app
        self.cr = canonical_rev or version or "latest"
        self.principal = "spiffe://cluster.local/ns/%s/sa/%s" % (ns, sa)
        self.pod = pod
        self.ip = ip
        self.node = node
        self.pod_labels = pod_labels or {}
        self.zone = zone
        self.region = region

    def node_id(self):
        d = {"service": self.cs, "namespace": self.ns}
        if self.cr not in ("latest", "unknown"):
            d["version"] = self.cr
        return d

    def target_labels(self):
        t = {"job": "kubernetes-pods", "instance": "%s:15020" % self.ip,
             "namespace": self.ns, "pod": self.pod, "node": self.node}
        t.update(self.pod_labels)
        return t


class Service:
    def __init__(self, name, ns):
        self.name = name
        self.ns = ns
        self.fqdn = "%s.%s.svc.cluster.local" % (name, ns)


def sidecar_pod_labels(app, version, pth):
    assert set(pth) <= K8S_HASH_ALPHABET and len(pth) == 10, pth
    d = {"app": app, "pod_template_hash": pth, "security_istio_io_tlsMode": "istio",
         "service_istio_io_canonical_name": app,
         "service_istio_io_canonical_revision": version or "latest"}
    if version:
        d["version"] = version
    return d


def mk_sidecar(workload, ns, app, version, sa, pth, suffix, ip, node, canonical_rev=None,
               extra=None):
    assert set(suffix) <= K8S_HASH_ALPHABET and len(suffix) == 5, suffix
    labels = sidecar_pod_labels(app, version, pth)
    if extra:
        labels.update(extra)
    return Workload(workload, ns, app, version, sa, canonical_rev=canonical_rev,
                    pod="%s-%s-%s" % (workload, pth, suffix), ip=ip, node=node,
                    pod_labels=labels)


# ---- Scenario A: bookinfo on sidecars (kind cluster, two workers) ----------------------
N1, N2 = "kind-worker", "kind-worker2"
BI = "bookinfo"
GW = mk_sidecar("istio-ingressgateway", "istio-system", "istio-ingressgateway", None,
                "istio-ingressgateway-service-account", "6b5f8c7d9f", "qk7mz", "10.244.1.5",
                N1, canonical_rev="latest",
                extra={"istio": "ingressgateway", "sidecar_istio_io_inject": "false"})
# a gateway pod is not an injected sidecar: no tlsMode label
del GW.pod_labels["security_istio_io_tlsMode"]
PP = mk_sidecar("productpage-v1", BI, "productpage", "v1", "bookinfo-productpage",
                "7c8f8b9f4d", "x2lqk", "10.244.1.12", N1)
DT = mk_sidecar("details-v1", BI, "details", "v1", "bookinfo-details",
                "65cfcf56f9", "4pbzq", "10.244.2.8", N2)
RV1 = mk_sidecar("reviews-v1", BI, "reviews", "v1", "bookinfo-reviews",
                 "5c4d6d447c", "wzq7n", "10.244.2.9", N2)
RV2 = mk_sidecar("reviews-v2", BI, "reviews", "v2", "bookinfo-reviews",
                 "79c8b5d8d7", "h6tqg", "10.244.1.13", N1)
RV3 = mk_sidecar("reviews-v3", BI, "reviews", "v3", "bookinfo-reviews",
                 "7f5b6f5c9d", "8mx2c", "10.244.2.10", N2)
RT1 = mk_sidecar("ratings-v1", BI, "ratings", "v1", "bookinfo-ratings",
                 "85cc46b6d4", "vmj9r", "10.244.1.14", N1)
RT2 = mk_sidecar("ratings-v2", BI, "ratings", "v2", "bookinfo-ratings-v2",
                 "6c8f7d8b5b", "q4rtw", "10.244.2.11", N2)
MDB = mk_sidecar("mongodb-v1", BI, "mongodb", "v1", "default",
                 "6d4d9b8f6c", "sz5kd", "10.244.1.15", N1)

S_PP, S_DT = Service("productpage", BI), Service("details", BI)
S_RV, S_RT, S_MDB = Service("reviews", BI), Service("ratings", BI), Service("mongodb", BI)

# ---- Scenario B: ambient namespace shop (GKE-like, two nodes in two zones) -------------
SHOP = "shop"
REGION = "us-central1"
NA, NBN = "gke-shop-default-pool-6f2c9a7d-k8vx", "gke-shop-default-pool-6f2c9a7d-q2nw"
ZA, ZB = "us-central1-a", "us-central1-b"


def ambient_wl(workload, app, version, sa, zone):
    # ambient app pods run no proxy: they are never scrape targets, only label values
    return Workload(workload, SHOP, app, version, sa, zone=zone, region=REGION)


FE = ambient_wl("frontend-v1", "frontend", "v1", "frontend", ZA)
CART = ambient_wl("cart-v1", "cart", "v1", "cart", ZB)
CAT = ambient_wl("catalog-v1", "catalog", "v1", "catalog", ZB)
PAY = ambient_wl("payments-v1", "payments", "v1", "payments", ZA)
WP = Workload("waypoint", SHOP, "waypoint", None, "waypoint", canonical_rev="latest",
              pod="waypoint-6cd5b8f7d9-zl9xk", ip="10.48.1.30", node=NA, zone=ZA,
              region=REGION,
              pod_labels={
                  # pod template labels of Istio's waypoint Deployment (labelmap'ed)
                  "gateway_istio_io_managed": "istio.io-mesh-controller",
                  "gateway_networking_k8s_io_gateway_class_name": "istio-waypoint",
                  "gateway_networking_k8s_io_gateway_name": "waypoint",
                  "istio_io_dataplane_mode": "none",
                  "pod_template_hash": "6cd5b8f7d9",
                  "service_istio_io_canonical_name": "waypoint",
                  "service_istio_io_canonical_revision": "latest",
                  "sidecar_istio_io_inject": "false",
              })
WP.cs = "waypoint"
# waypoint workload's "app" as ztunnel reports it = canonical name
S_CART, S_CAT, S_PAY = Service("cart", SHOP), Service("catalog", SHOP), Service("payments", SHOP)


class Ztunnel:
    def __init__(self, pod, ip, node):
        assert set(pod.split("-")[-1]) <= K8S_HASH_ALPHABET
        self.pod, self.ip, self.node = pod, ip, node

    def target_labels(self):
        return {"job": "kubernetes-pods", "instance": "%s:15020" % self.ip,
                "namespace": "istio-system", "pod": self.pod, "node": self.node,
                "app": "ztunnel", "controller_revision_hash": "7b9c5d6f8d",
                "pod_template_generation": "1", "sidecar_istio_io_inject": "false"}


ZT_A = Ztunnel("ztunnel-4xg7p", "10.48.1.4", NA)   # node A: frontend, payments, waypoint
ZT_B = Ztunnel("ztunnel-r9vbm", "10.48.2.3", NBN)  # node B: cart, catalog

# --------------------------------------------------------------------------------------
# Label builders (Istio standard labels)
# --------------------------------------------------------------------------------------
UNKNOWN_SRC = {"source_workload": "unknown", "source_workload_namespace": "unknown",
               "source_principal": "unknown", "source_app": "unknown",
               "source_version": "unknown", "source_canonical_service": "unknown",
               "source_canonical_revision": "latest", "source_cluster": "unknown"}


def src_labels(w, principal=True):
    d = {"source_workload": w.workload, "source_workload_namespace": w.ns,
         "source_principal": w.principal if principal else "unknown",
         "source_app": w.app, "source_canonical_service": w.cs,
         "source_canonical_revision": w.cr, "source_cluster": "Kubernetes"}
    # Envoy emits source_version="" for pods without a version label; Prometheus
    # drops empty-valued labels, so the label is simply absent.
    if w.version:
        d["source_version"] = w.version
    return d


def dst_labels(w, svc):
    d = {"destination_workload": w.workload, "destination_workload_namespace": w.ns,
         "destination_principal": w.principal, "destination_app": w.app,
         "destination_canonical_service": w.cs, "destination_canonical_revision": w.cr,
         "destination_cluster": "Kubernetes", "destination_service": svc.fqdn,
         "destination_service_name": svc.name, "destination_service_namespace": svc.ns}
    if w.version:
        d["destination_version"] = w.version
    return d


def dst_unknown_workload(svc):
    """Request that never reached a destination proxy (UO, UF, ...): only the
    service is known (from the outbound cluster), the peer is not."""
    return {"destination_workload": "unknown", "destination_workload_namespace": "unknown",
            "destination_principal": "unknown", "destination_app": "unknown",
            "destination_version": "unknown", "destination_canonical_service": "unknown",
            "destination_canonical_revision": "latest", "destination_cluster": "unknown",
            "destination_service": svc.fqdn, "destination_service_name": svc.name,
            "destination_service_namespace": svc.ns}


def dst_external(host):
    """MESH_EXTERNAL ServiceEntry host, reported by the client sidecar only."""
    return {"destination_workload": "unknown", "destination_workload_namespace": "unknown",
            "destination_principal": "unknown", "destination_app": "unknown",
            "destination_version": "unknown", "destination_canonical_service": "unknown",
            "destination_canonical_revision": "latest", "destination_cluster": "unknown",
            "destination_service": host, "destination_service_name": host,
            "destination_service_namespace": "unknown"}


def zt_src(w):
    # ztunnel: source_app/source_version are the canonical name/revision
    return {"source_workload": w.workload, "source_workload_namespace": w.ns,
            "source_principal": w.principal, "source_app": w.cs, "source_version": w.cr,
            "source_canonical_service": w.cs, "source_canonical_revision": w.cr,
            "source_cluster": "Kubernetes",
            "source_region": w.region, "source_zone": w.zone}


def zt_dst(w, svc):
    return {"destination_workload": w.workload, "destination_workload_namespace": w.ns,
            "destination_principal": w.principal, "destination_app": w.cs,
            "destination_version": w.cr, "destination_canonical_service": w.cs,
            "destination_canonical_revision": w.cr, "destination_cluster": "Kubernetes",
            "destination_service": svc.fqdn, "destination_service_name": svc.name,
            "destination_service_namespace": svc.ns,
            "destination_region": w.region, "destination_zone": w.zone}


# --------------------------------------------------------------------------------------
# TRAFFIC TABLES (per 15 s interval).  One row = one logical L7 series (same
# response_code / grpc status); both reporters are generated from it.
# --------------------------------------------------------------------------------------
# L7 flow fields:
#   src, dst      Workload (src None = unknown/unmeshed client)
#   dst_kind      "workload" | "service" (never reached a workload) | "external"
#   svc           Service (or host string for external)
#   proto         "http" | "grpc"
#   reporters     which proxies report: ("source","destination") | ("destination",) | ("source",)
#   mtls          True if the destination sees mTLS (connection_security_policy)
#   rows          list of (count, response_code, grpc_status|None, flags_at_source,
#                          flags_at_destination, latency_profile)
#   bytes         (request_profile, response_profile) or None (histograms only emitted
#                 for the flows that have it)
#   idle          True: series exists but got no traffic in the interval
BOOKINFO_L7 = [
    dict(name="gateway->productpage", src=GW, dst=PP, dst_kind="workload", svc=S_PP,
         proto="http", reporters=("source", "destination"), mtls=True,
         bytes=("bytes_empty", "bytes_html"),
         rows=[(280, "200", None, "-", "-", "lat_productpage"),
               # local rate limit on productpage's inbound sidecar: flag RL only there
               (20, "429", None, "-", "RL", "lat_instant")]),
    dict(name="unknown->productpage", src=None, dst=PP, dst_kind="workload", svc=S_PP,
         proto="http", reporters=("destination",), mtls=False, bytes=None,
         rows=[(20, "200", None, None, "-", "lat_productpage")]),
    dict(name="productpage->details(grpc)", src=PP, dst=DT, dst_kind="workload", svc=S_DT,
         proto="grpc", reporters=("source", "destination"), mtls=True, bytes=None,
         rows=[(290, "200", "0", "-", "-", "lat_fast"),
               (10, "200", "14", "-", "-", "lat_fast")]),   # gRPC UNAVAILABLE
    dict(name="productpage->reviews-v1", src=PP, dst=RV1, dst_kind="workload", svc=S_RV,
         proto="http", reporters=("source", "destination"), mtls=True, bytes=None,
         rows=[(150, "200", None, "-", "-", "lat_fast")]),
    dict(name="productpage->reviews-v2", src=PP, dst=RV2, dst_kind="workload", svc=S_RV,
         proto="http", reporters=("source", "destination"), mtls=True,
         bytes=("bytes_empty", "bytes_json"),
         rows=[(84, "200", None, "-", "-", "lat_reviews"),
               # CUSTOM (ext_authz) AuthorizationPolicy on reviews-v2: UAEX at the server
               (6, "403", None, "-", "UAEX", "lat_fast")]),
    dict(name="productpage->reviews-v2 (old 500s, idle)", src=PP, dst=RV2,
         dst_kind="workload", svc=S_RV, proto="http", reporters=("source", "destination"),
         mtls=True, bytes=None, idle=True,
         rows=[(3, "500", None, "-", "-", "lat_reviews")]),
    dict(name="productpage->reviews-v3", src=PP, dst=RV3, dst_kind="workload", svc=S_RV,
         proto="http", reporters=("source", "destination"), mtls=True, bytes=None,
         rows=[(60, "200", None, "-", "-", "lat_reviews")]),
    dict(name="reviews-v2->ratings-v1", src=RV2, dst=RT1, dst_kind="workload", svc=S_RT,
         proto="http", reporters=("source", "destination"), mtls=True, bytes=None,
         rows=[(84, "200", None, "-", "-", "lat_fast")]),
    dict(name="reviews-v3->ratings-v1", src=RV3, dst=RT1, dst_kind="workload", svc=S_RT,
         proto="http", reporters=("source", "destination"), mtls=True, bytes=None,
         rows=[(44, "200", None, "-", "-", "lat_fast"),
               (4, "503", None, "-", "-", "lat_fast")]),   # ratings app itself returns 503
    dict(name="reviews-v3->ratings (never reached a ratings pod)", src=RV3, dst=None,
         dst_kind="service", svc=S_RT, proto="http", reporters=("source",), mtls=False,
         bytes=None,  # no upstream connection was made: source_principal is unknown too
         rows=[(9, "503", None, "UO", None, "lat_instant"),     # circuit-breaker overflow
               (3, "503", None, "UF", None, "lat_connfail")]),  # upstream connect failure
    dict(name="reviews-v1->api.example.com", src=RV1, dst=None, dst_kind="external",
         svc="api.example.com", proto="http", reporters=("source",), mtls=False,
         bytes=None,
         rows=[(29, "200", None, "-", None, "lat_external"),
               (1, "504", None, "UT", None, "lat_timeout")]),   # route timeout at client
    dict(name="gateway->details (old traffic, idle)", src=GW, dst=DT, dst_kind="workload",
         svc=S_DT, proto="http", reporters=("source", "destination"), mtls=True,
         bytes=None, idle=True,
         rows=[(42, "200", None, "-", "-", "lat_fast")]),
]

# TCP flows: per-interval increments.  received = request direction (client -> server),
# sent = response direction (server -> client); identical at both reporters.
BOOKINFO_TCP = [
    dict(name="ratings-v2->mongodb-v1", src=RT2, dst=MDB, svc=S_MDB,
         reporters=("source", "destination"),
         opened=6, closed=5, received=5120, sent=61440),
]

# Ambient: waypoint L7 (reporter="waypoint", reported once by the waypoint pod)
SHOP_L7 = [
    dict(name="frontend->cart via waypoint", src=FE, dst=CART, svc=S_CART,
         bytes=("bytes_cart_req", "bytes_cart_resp"),
         rows=[(190, "200", "lat_cart"), (10, "404", "lat_cart")]),
    dict(name="cart->payments via waypoint", src=CART, dst=PAY, svc=S_PAY, bytes=None,
         rows=[(45, "200", "lat_payments"), (12, "503", "lat_payments"),
               (3, "504", "lat_timeout")]),
]
# per 504 row the waypoint (not the app) generated the reply: response_flags UT
SHOP_FLAGS = {"504": "UT"}

# Ambient: ztunnel L4 hops.  reporter, reporting ztunnel, src, dst workload, service
SHOP_TCP = [
    # frontend -> waypoint: only frontend's ztunnel reports (the waypoint terminates
    # HBONE itself, no ztunnel inbound on its side); destination = the waypoint
    # workload, destination_service = the *intended* service (cart).
    dict(name="frontend->waypoint (cart)", reporter="source", zt=ZT_A, src=FE, dst=WP,
         svc=S_CART, opened=4, closed=4, received=38000, sent=412000),
    # waypoint -> cart: only cart's ztunnel (inbound) reports; source = waypoint
    dict(name="waypoint->cart", reporter="destination", zt=ZT_B, src=WP, dst=CART,
         svc=S_CART, opened=2, closed=2, received=39200, sent=412000),
    # frontend -> catalog without waypoint: both ztunnels
    dict(name="frontend->catalog (source)", reporter="source", zt=ZT_A, src=FE, dst=CAT,
         svc=S_CAT, opened=10, closed=10, received=12800, sent=256000),
    dict(name="frontend->catalog (destination)", reporter="destination", zt=ZT_B, src=FE,
         dst=CAT, svc=S_CAT, opened=10, closed=10, received=12800, sent=256000),
    dict(name="cart->waypoint (payments)", reporter="source", zt=ZT_B, src=CART, dst=WP,
         svc=S_PAY, opened=3, closed=3, received=9000, sent=21000),
    dict(name="waypoint->payments", reporter="destination", zt=ZT_A, src=WP, dst=PAY,
         svc=S_PAY, opened=1, closed=1, received=9300, sent=21000),
]


# --------------------------------------------------------------------------------------
# Series model
# --------------------------------------------------------------------------------------
class Store:
    """Holds every series for one scenario as (family, labels) -> (v0, v1)."""

    def __init__(self):
        self.counters = {}    # family -> {labelkey: (labels, v0, v1)}
        self.hists = {}       # family -> {labelkey: (labels, b0[NB], b1[NB], s0, s1)}

    @staticmethod
    def key(labels):
        return tuple(sorted(labels.items()))

    def counter(self, fam, labels, v0, v1):
        d = self.counters.setdefault(fam, {})
        k = self.key(labels)
        assert k not in d, ("duplicate series", fam, labels)
        d[k] = (labels, v0, v1)

    def hist(self, fam, labels, b0, b1, s0, s1):
        d = self.hists.setdefault(fam, {})
        k = self.key(labels)
        assert k not in d, ("duplicate series", fam, labels)
        d[k] = (labels, b0, b1, s0, s1)


def add_l7_series(store, fam_prefix_labels, target, key, inc, bytes_prof, lat_prof, idle,
                  shift):
    """One istio_requests_total series + its histograms, for one reporter."""
    factor, jitter = baseline_factor(key)
    if idle:
        base, delta = inc, 0       # 'inc' of an idle row is its (constant) total
    else:
        base, delta = inc * factor + jitter, inc
    labels = dict(fam_prefix_labels)
    labels.update(target)
    store.counter("istio_requests_total", labels, base, base + delta)

    def hist(fam, prof, kind, do_shift):
        b0 = distribute(base, profile_weights(prof))
        bi = distribute(delta, profile_weights(prof))
        if do_shift:
            b0, bi = shift_later(b0), shift_later(bi)
        b1 = [x + y for x, y in zip(b0, bi)]
        store.hist(fam, labels, b0, b1, hist_sum(b0, kind), hist_sum(b1, kind))
        return bi

    lat_inc = hist("istio_request_duration_milliseconds", lat_prof, "ms", shift)
    if bytes_prof:
        hist("istio_request_bytes", bytes_prof[0], "bytes", False)
        hist("istio_response_bytes", bytes_prof[1], "bytes", False)
    return lat_inc


def empty_edge(src_node, dst_node, proto):
    e = {"source": src_node, "destination": dst_node, "protocol": proto,
         "requests": 0, "http_4xx": 0, "http_5xx": 0, "grpc_errors": 0,
         "rate_limited": 0, "denied": 0, "overflows": 0, "mtls": 0, "tls_known": 0,
         "tcp_sent_bytes": 0, "tcp_received_bytes": 0, "tcp_connections_opened": 0,
         "tcp_connections_closed": 0, "response_flags": {}}
    if proto != "tcp":
        e["latency_histogram_ms"] = {"bounds": BOUNDS, "counts": [0] * NB}
    return e


NAMED_FLAGS = ("UH", "UF", "UC", "UR", "URX", "UT", "NR", "NC", "DC", "LR", "SI", "FI")


def count_l7(edge, n, code, grpc, flags, csp, lat_counts):
    edge["requests"] += n
    c = int(code)
    if 400 <= c < 500:
        edge["http_4xx"] += n
    if 500 <= c < 600:
        edge["http_5xx"] += n
    if edge["protocol"] == "grpc" and grpc not in (None, "", "0"):
        edge["grpc_errors"] += n
    if c == 429:
        edge["rate_limited"] += n
    if c == 403:
        edge["denied"] += n
    if "UO" in flags.split(","):
        edge["overflows"] += n
    # Envoy's other response flags, by name (docs/api.md, `response_flags`).
    for f in flags.split(","):
        if f in ("", "-", "UAEX", "RL", "RLSE", "UO"):
            continue
        name = f if f in NAMED_FLAGS else "other"
        edge["response_flags"][name] = edge["response_flags"].get(name, 0) + n
    if csp == "mutual_tls":
        edge["mtls"] += n
    if csp != "unknown":
        edge["tls_known"] += n
    h = edge["latency_histogram_ms"]["counts"]
    for i, x in enumerate(lat_counts):
        h[i] += x


def count_tcp(edge, opened, closed, sent, received, csp):
    edge["tcp_connections_opened"] += opened
    edge["tcp_connections_closed"] += closed
    edge["tcp_sent_bytes"] += sent
    edge["tcp_received_bytes"] += received
    if csp == "mutual_tls":
        edge["mtls"] += opened
    if csp != "unknown":
        edge["tls_known"] += opened


def ekey(e):
    return (json.dumps(e["source"], sort_keys=True), json.dumps(e["destination"], sort_keys=True),
            e["protocol"])


def finish(edges):
    out = [e for e in edges.values()
           if e["requests"] or e["tcp_connections_opened"] or e["tcp_sent_bytes"]
           or e["tcp_received_bytes"] or e["tcp_connections_closed"]]
    return sorted(out, key=ekey)


# --------------------------------------------------------------------------------------
# Scenario builders
# --------------------------------------------------------------------------------------
def build_bookinfo():
    st = Store()
    edges = {}
    for f in BOOKINFO_L7:
        src_node = f["src"].node_id() if f["src"] else {"service": "unknown"}
        if f["dst_kind"] == "workload":
            dst_node = f["dst"].node_id()
        elif f["dst_kind"] == "service":
            dst_node = {"service": f["svc"].name, "namespace": f["svc"].ns}
        else:
            dst_node = {"service": f["svc"], "external": True}
        ek = (json.dumps(src_node, sort_keys=True), json.dumps(dst_node, sort_keys=True),
              f["proto"])
        edge = edges.setdefault(ek, empty_edge(src_node, dst_node, f["proto"]))
        idle = f.get("idle", False)
        counted = "destination" if "destination" in f["reporters"] else "source"
        for (n, code, grpc, fl_src, fl_dst, lat) in f["rows"]:
            common = {"request_protocol": f["proto"], "response_code": code}
            if grpc is not None:
                common["grpc_response_status"] = grpc
            if f["dst_kind"] == "workload":
                dl = dst_labels(f["dst"], f["svc"])
            elif f["dst_kind"] == "service":
                dl = dst_unknown_workload(f["svc"])
            else:
                dl = dst_external(f["svc"])
            rowkey = "%s|%s|%s" % (f["name"], code, grpc)
            for rep in f["reporters"]:
                lab = dict(common)
                lab["reporter"] = rep
                lab.update(dl)
                if rep == "source":
                    lab.update(src_labels(f["src"], principal=f["mtls"]))
                    lab["response_flags"] = fl_src
                    lab["connection_security_policy"] = "unknown"
                    target = f["src"].target_labels()
                else:
                    lab.update(src_labels(f["src"]) if f["src"] else UNKNOWN_SRC)
                    if not f["mtls"]:
                        lab["destination_principal"] = "unknown"
                    lab["response_flags"] = fl_dst
                    lab["connection_security_policy"] = "mutual_tls" if f["mtls"] else "none"
                    target = f["dst"].target_labels()
                # client side sees slightly higher latency for the same requests
                lat_inc = add_l7_series(st, lab, target, rowkey, n, f["bytes"], lat, idle, shift=(rep == "source" and
                                                     "destination" in f["reporters"]))
                if rep == counted and not idle:
                    count_l7(edge, n, code, grpc, lab["response_flags"],
                             lab["connection_security_policy"], lat_inc)
    for f in BOOKINFO_TCP:
        src_node, dst_node = f["src"].node_id(), f["dst"].node_id()
        ek = (json.dumps(src_node, sort_keys=True), json.dumps(dst_node, sort_keys=True), "tcp")
        edge = edges.setdefault(ek, empty_edge(src_node, dst_node, "tcp"))
        for rep in f["reporters"]:
            lab = {"reporter": rep, "request_protocol": "tcp", "response_flags": "-"}
            lab.update(dst_labels(f["dst"], f["svc"]))
            lab.update(src_labels(f["src"]))
            lab["connection_security_policy"] = "unknown" if rep == "source" else "mutual_tls"
            target = (f["src"] if rep == "source" else f["dst"]).target_labels()
            lab.update(target)
            add_tcp_series(st, lab, f["name"], f)
            if rep == "destination":
                count_tcp(edge, f["opened"], f["closed"], f["sent"], f["received"],
                          lab["connection_security_policy"])
    expected = {
        "description": "Bookinfo on sidecars (namespace bookinfo) behind istio-ingressgateway "
                       "(istio-system). Increments between scrape-0 and scrape-1, each call "
                       "counted once (destination-reported series where a destination proxy "
                       "reported, source-reported otherwise).",
        "interval_s": INTERVAL_S,
        "edges": finish(edges),
    }
    return st, expected


def add_tcp_series(st, lab, key, f):
    factor, jitter = baseline_factor(key)
    for fam, field in (("istio_tcp_connections_opened_total", "opened"),
                       ("istio_tcp_connections_closed_total", "closed"),
                       ("istio_tcp_sent_bytes_total", "sent"),
                       ("istio_tcp_received_bytes_total", "received")):
        inc = f[field]
        base = inc * factor + (jitter if field in ("opened",) else jitter * 37)
        if field == "closed":
            # closed lags opened by the connections still open at scrape time
            o_base = f["opened"] * factor + jitter
            base = o_base - (f["opened"] - f["closed"]) - 1
        st.counter(fam, lab, base, base + inc)


def build_ambient():
    st = Store()
    edges, wedges = {}, {}
    wp_node = WP.node_id()

    def edge_in(d, s, t, p):
        ek = (json.dumps(s, sort_keys=True), json.dumps(t, sort_keys=True), p)
        return d.setdefault(ek, empty_edge(s, t, p))

    for f in SHOP_L7:
        e = edge_in(edges, f["src"].node_id(), f["dst"].node_id(), "http")
        e1 = edge_in(wedges, f["src"].node_id(), wp_node, "http")
        e2 = edge_in(wedges, wp_node, f["dst"].node_id(), "http")
        for (n, code, lat) in f["rows"]:
            lab = {"reporter": "waypoint", "request_protocol": "http", "response_code": code,
                   "response_flags": SHOP_FLAGS.get(code, "-"),
                   "connection_security_policy": "mutual_tls"}
            lab.update(src_labels(f["src"]))
            lab.update(dst_labels(f["dst"], f["svc"]))
            lat_inc = add_l7_series(st, lab, WP.target_labels(), f["name"] + code, n,
                                    f["bytes"], lat, False, shift=False)
            for ed in (e, e1, e2):
                count_l7(ed, n, code, None, lab["response_flags"], "mutual_tls", lat_inc)
    for f in SHOP_TCP:
        lab = {"reporter": f["reporter"], "request_protocol": "tcp", "response_flags": "-",
               "connection_security_policy": "mutual_tls"}
        lab.update(zt_src(f["src"]))
        lab.update(zt_dst(f["dst"], f["svc"]))
        lab.update(f["zt"].target_labels())
        add_tcp_series(st, lab, f["name"], f)
        via_wp = f["src"] is WP or f["dst"] is WP
        s, t = f["src"].node_id(), f["dst"].node_id()
        # hidden-waypoint graph: hops to/from a waypoint add nothing;
        # direct pairs: prefer the destination ztunnel's report
        if not via_wp and f["reporter"] == "destination":
            count_tcp(edge_in(edges, s, t, "tcp"), f["opened"], f["closed"], f["sent"],
                      f["received"], "mutual_tls")
        # waypoint graph: every hop is its own tcp edge, one report per hop exists
        # (source-only for X->waypoint, destination-only for waypoint->Y)
        if via_wp or f["reporter"] == "destination":
            count_tcp(edge_in(wedges, s, t, "tcp"), f["opened"], f["closed"], f["sent"],
                      f["received"], "mutual_tls")
    expected = {
        "description": "Ambient namespace shop with ztunnel and one namespace-scoped waypoint "
                       "(Deployment 'waypoint'). 'edges' = default graph (waypoints hidden): "
                       "L7 from reporter=waypoint, L4 from ztunnel only for pairs without a "
                       "waypoint. 'waypoint_edges' = complete edge list when waypoints are "
                       "drawn.",
        "interval_s": INTERVAL_S,
        "edges": finish(edges),
        "waypoint_edges": finish(wedges),
    }
    return st, expected


# --------------------------------------------------------------------------------------
# Rendering (text exposition format 0.0.4)
# --------------------------------------------------------------------------------------
HELP = {
    "istio_requests_total": "Requests handled by an Istio proxy.",
    "istio_request_duration_milliseconds": "Duration of requests in milliseconds.",
    "istio_request_bytes": "HTTP request body sizes in bytes.",
    "istio_response_bytes": "HTTP response body sizes in bytes.",
    "istio_tcp_sent_bytes_total": "Bytes sent during response (server to client) on TCP connections.",
    "istio_tcp_received_bytes_total": "Bytes received during request (client to server) on TCP connections.",
    "istio_tcp_connections_opened_total": "TCP connections opened.",
    "istio_tcp_connections_closed_total": "TCP connections closed.",
}
ORDER = ["istio_requests_total", "istio_request_duration_milliseconds", "istio_request_bytes",
         "istio_response_bytes", "istio_tcp_connections_opened_total",
         "istio_tcp_connections_closed_total", "istio_tcp_received_bytes_total",
         "istio_tcp_sent_bytes_total"]


def esc(v):
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def fmt_labels(labels):
    return "{" + ",".join('%s="%s"' % (k, esc(v)) for k, v in sorted(labels.items())) + "}"


def fmt_num(x):
    if isinstance(x, int) or float(x).is_integer():
        return str(int(x))
    return repr(float(x))


def render(st, which, title):
    lines = ["# %s, scrape %d at %d ms (Prometheus scrape_interval 15s)." % (title, which,
                                                                           T0_MS if which == 0 else T1_MS)]
    for fam in ORDER:
        if fam in st.counters:
            lines.append("# HELP %s %s" % (fam, HELP[fam]))
            lines.append("# TYPE %s counter" % fam)
            for k in sorted(st.counters[fam]):
                labels, v0, v1 = st.counters[fam][k]
                lines.append("%s%s %s" % (fam, fmt_labels(labels), fmt_num(v0 if which == 0 else v1)))
        if fam in st.hists:
            lines.append("# HELP %s %s" % (fam, HELP[fam]))
            lines.append("# TYPE %s histogram" % fam)
            for k in sorted(st.hists[fam]):
                labels, b0, b1, s0, s1 = st.hists[fam][k]
                b = b0 if which == 0 else b1
                cum = 0
                for i in range(NB):
                    cum += b[i]
                    bl = dict(labels)
                    bl["le"] = LE[i]
                    lines.append("%s_bucket%s %d" % (fam, fmt_labels(bl), cum))
                lines.append("%s_sum%s %s" % (fam, fmt_labels(labels), fmt_num(s0 if which == 0 else s1)))
                lines.append("%s_count%s %d" % (fam, fmt_labels(labels), cum))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------
# Strict parser (text format 0.0.4) and checks
# --------------------------------------------------------------------------------------
NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LNAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


class ParseError(Exception):
    pass


def parse_value(s, where):
    if s in ("+Inf", "-Inf", "NaN"):
        return float(s.replace("Inf", "inf").replace("NaN", "nan"))
    if not re.fullmatch(r"[-+]?(\d+\.?\d*([eE][-+]?\d+)?|\.\d+([eE][-+]?\d+)?)", s):
        raise ParseError("%s: bad value %r" % (where, s))
    return float(s)


def parse_labels(s, i, where):
    """s[i] == '{'; returns (dict, index after '}')."""
    assert s[i] == "{"
    i += 1
    labels = {}
    while True:
        if i >= len(s):
            raise ParseError("%s: unterminated label set" % where)
        if s[i] == "}":
            return labels, i + 1
        m = LNAME_RE.match(s, i)
        if not m:
            raise ParseError("%s: bad label name at col %d" % (where, i))
        name = m.group(0)
        i = m.end()
        if s[i:i + 2] != '="':
            raise ParseError("%s: expected =\" after %s" % (where, name))
        i += 2
        val = []
        while True:
            if i >= len(s):
                raise ParseError("%s: unterminated label value" % where)
            c = s[i]
            if c == "\\":
                nxt = s[i + 1:i + 2]
                if nxt == "n":
                    val.append("\n")
                elif nxt in ("\\", '"'):
                    val.append(nxt)
                else:
                    raise ParseError("%s: bad escape \\%s" % (where, nxt))
                i += 2
            elif c == '"':
                i += 1
                break
            elif c == "\n":
                raise ParseError("%s: newline in label value" % where)
            else:
                val.append(c)
                i += 1
        if name in labels:
            raise ParseError("%s: duplicate label %s" % (where, name))
        if name == "__name__":
            raise ParseError("%s: __name__ given as label" % where)
        labels[name] = "".join(val)
        if s[i] == ",":
            i += 1
        elif s[i] != "}":
            raise ParseError("%s: expected , or } at col %d" % (where, i))


def family_of(name, types):
    for suf in ("_bucket", "_sum", "_count"):
        if name.endswith(suf) and types.get(name[: -len(suf)]) == "histogram":
            return name[: -len(suf)]
    return name


def parse_prom(text, path):
    """Returns {family: {'type': t, 'samples': {(name, labelkey): (labels, value)}}}."""
    types, helps, fams, seen_done = {}, {}, {}, set()
    current = None
    if not text.endswith("\n"):
        raise ParseError("%s: no trailing newline" % path)
    for ln, line in enumerate(text.split("\n")[:-1], 1):
        where = "%s:%d" % (path, ln)
        if line == "":
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                if not NAME_RE.fullmatch(name):
                    raise ParseError("%s: bad metric name %r" % (where, name))
                if parts[1] == "TYPE":
                    if len(parts) != 4 or parts[3] not in TYPES:
                        raise ParseError("%s: bad TYPE line" % where)
                    if name in types:
                        raise ParseError("%s: second TYPE for %s" % (where, name))
                    if name in fams:
                        raise ParseError("%s: TYPE after samples of %s" % (where, name))
                    types[name] = parts[3]
                else:
                    if name in helps:
                        raise ParseError("%s: second HELP for %s" % (where, name))
                    helps[name] = parts[3] if len(parts) == 4 else ""
            continue
        m = NAME_RE.match(line)
        if not m:
            raise ParseError("%s: bad sample line" % where)
        name = m.group(0)
        i = m.end()
        labels = {}
        if i < len(line) and line[i] == "{":
            labels, i = parse_labels(line, i, where)
        if i >= len(line) or line[i] != " ":
            raise ParseError("%s: expected single space before value" % where)
        rest = line[i + 1:].split(" ")
        if len(rest) not in (1, 2) or "" in rest:
            raise ParseError("%s: bad value/timestamp part" % where)
        value = parse_value(rest[0], where)
        if len(rest) == 2 and not re.fullmatch(r"-?\d+", rest[1]):
            raise ParseError("%s: bad timestamp" % where)
        fam = family_of(name, types)
        if fam not in types:
            raise ParseError("%s: sample before/without TYPE for %s" % (where, fam))
        if fam != current:
            if fam in seen_done:
                raise ParseError("%s: family %s is not contiguous" % (where, fam))
            if current:
                seen_done.add(current)
            current = fam
        t = types[fam]
        if t == "counter" and not name.endswith("_total"):
            raise ParseError("%s: counter sample without _total" % where)
        if t == "histogram" and name == fam:
            raise ParseError("%s: histogram sample without suffix" % where)
        if "le" in labels and not name.endswith("_bucket"):
            raise ParseError("%s: le label outside _bucket" % where)
        if name.endswith("_bucket") and "le" not in labels:
            raise ParseError("%s: bucket without le" % where)
        d = fams.setdefault(fam, {"type": t, "samples": {}})
        k = (name, tuple(sorted(labels.items())))
        if k in d["samples"]:
            raise ParseError("%s: duplicate series" % where)
        if value < 0 or value != value:
            raise ParseError("%s: negative/NaN value in %s" % (where, t))
        d["samples"][k] = (labels, value)
    # histogram structure
    for fam, d in fams.items():
        if d["type"] != "histogram":
            continue
        groups = {}
        for (name, _), (labels, v) in d["samples"].items():
            base = {k: x for k, x in labels.items() if k != "le"}
            g = groups.setdefault(tuple(sorted(base.items())), {"b": [], "sum": None, "count": None})
            if name.endswith("_bucket"):
                g["b"].append((float(labels["le"].replace("+Inf", "inf")), v))
            elif name.endswith("_sum"):
                g["sum"] = v
            else:
                g["count"] = v
        for gk, g in groups.items():
            if g["sum"] is None or g["count"] is None:
                raise ParseError("%s: %s missing _sum/_count" % (path, fam))
            bs = sorted(g["b"])
            if [b for b, _ in bs] != [float(x.replace("+Inf", "inf")) for x in LE]:
                raise ParseError("%s: %s bucket bounds differ from Istio defaults" % (path, fam))
            vals = [v for _, v in bs]
            if any(b < a for a, b in zip(vals, vals[1:])):
                raise ParseError("%s: %s buckets not cumulative" % (path, fam))
            if vals[-1] != g["count"]:
                raise ParseError("%s: %s +Inf != _count" % (path, fam))
    return fams


def series_values(fams):
    """flat {(name, labelkey): value}"""
    out = {}
    for d in fams.values():
        for k, (labels, v) in d["samples"].items():
            out[k] = v
    return out


# --------------------------------------------------------------------------------------
# Independent re-derivation of the graph from the parsed files (README rules)
# --------------------------------------------------------------------------------------
def node_src(l):
    if l["source_workload"] == "unknown":
        return {"service": "unknown"}
    d = {"service": l["source_canonical_service"], "namespace": l["source_workload_namespace"]}
    if l["source_canonical_revision"] not in ("latest", "unknown"):
        d["version"] = l["source_canonical_revision"]
    return d


def node_dst(l):
    if l["destination_workload"] != "unknown":
        d = {"service": l["destination_canonical_service"],
             "namespace": l["destination_workload_namespace"]}
        if l["destination_canonical_revision"] not in ("latest", "unknown"):
            d["version"] = l["destination_canonical_revision"]
        return d
    if l["destination_service"].endswith(".svc.cluster.local"):
        return {"service": l["destination_service_name"],
                "namespace": l["destination_service_namespace"]}
    return {"service": l["destination_service_name"], "external": True}


def derive(f0, f1, ambient):
    v0, v1 = series_values(f0), series_values(f1)
    if set(v0) != set(v1):
        raise SystemExit("series sets differ between scrapes")
    for k in v0:
        if v1[k] < v0[k]:
            raise SystemExit("counter went down: %r" % (k,))
    delta = {k: v1[k] - v0[k] for k in v0}
    req = [(dict(lk), delta[(n, lk)]) for (n, lk) in v1 if n == "istio_requests_total"]
    dur = {}
    for (n, lk) in v1:
        if n == "istio_request_duration_milliseconds_bucket":
            l = dict(lk)
            le = l.pop("le")
            dur.setdefault(tuple(sorted(l.items())), {})[le] = delta[(n, lk)]
    tcp = {}
    for (n, lk) in v1:
        if n.startswith("istio_tcp_"):
            tcp.setdefault(lk, {})[n] = delta[(n, lk)]

    def lat_noncum(lk):
        cum = [dur[lk][le] for le in LE]
        return [cum[0]] + [b - a for a, b in zip(cum, cum[1:])]

    waypoints = set()  # (namespace, canonical service) of waypoint workloads
    for l, _ in req:
        if l["reporter"] == "waypoint":
            waypoints.add((l["namespace"], l["service_istio_io_canonical_name"]))

    def is_wp(ns, cs):
        return (ns, cs) in waypoints

    hidden, shown = {}, {}

    def edge(d, s, t, p):
        ek = (json.dumps(s, sort_keys=True), json.dumps(t, sort_keys=True), p)
        return d.setdefault(ek, empty_edge(s, t, p))

    # ---- L7
    by_edge = {}
    for l, dv in req:
        s, t = node_src(l), node_dst(l)
        ek = (json.dumps(s, sort_keys=True), json.dumps(t, sort_keys=True), l["request_protocol"])
        by_edge.setdefault(ek, []).append((l, dv, s, t))
    for ek, items in by_edge.items():
        reps = {l["reporter"] for l, _, _, _ in items}
        use = "waypoint" if "waypoint" in reps else ("destination" if "destination" in reps else "source")
        for l, dv, s, t in items:
            if l["reporter"] != use or dv == 0:
                continue
            lk = tuple(sorted(l.items()))
            args = (dv, l["response_code"], l.get("grpc_response_status"), l["response_flags"],
                    l["connection_security_policy"], lat_noncum(lk))
            count_l7(edge(hidden, s, t, l["request_protocol"]), *args)
            if ambient:
                w = {"service": l["service_istio_io_canonical_name"], "namespace": l["namespace"]}
                count_l7(edge(shown, s, w, l["request_protocol"]), *args)
                count_l7(edge(shown, w, t, l["request_protocol"]), *args)
    # ---- L4
    by_edge = {}
    for lk, vals in tcp.items():
        l = dict(lk)
        s, t = node_src(l), node_dst(l)
        via_wp = is_wp(l["source_workload_namespace"], l["source_canonical_service"]) or \
            is_wp(l["destination_workload_namespace"], l["destination_canonical_service"])
        ek = (json.dumps(s, sort_keys=True), json.dumps(t, sort_keys=True))
        by_edge.setdefault(ek, []).append((l, vals, s, t, via_wp))
    for ek, items in by_edge.items():
        reps = {l["reporter"] for l, _, _, _, _ in items}
        use = "destination" if "destination" in reps else "source"
        for l, vals, s, t, via_wp in items:
            if l["reporter"] != use:
                continue
            args = (vals["istio_tcp_connections_opened_total"],
                    vals["istio_tcp_connections_closed_total"],
                    vals["istio_tcp_sent_bytes_total"], vals["istio_tcp_received_bytes_total"],
                    l["connection_security_policy"])
            if not any(args[:4]):
                continue
            if not via_wp:
                count_tcp(edge(hidden, s, t, "tcp"), *args)
            if ambient:
                count_tcp(edge(shown, s, t, "tcp"), *args)
    return finish(hidden), finish(shown)


# --------------------------------------------------------------------------------------
def write(path, text):
    with open(path, "w") as fh:
        fh.write(text)


def main():
    ok = True
    scenarios = [("bookinfo-sidecar", build_bookinfo, False,
                  "Bookinfo on sidecars (namespace bookinfo) + istio-ingressgateway"),
                 ("ambient-waypoint", build_ambient, True,
                  "Ambient namespace shop: ztunnel + waypoint")]
    promtool = shutil.which("promtool")
    for name, builder, ambient, title in scenarios:
        d = os.path.join(HERE, name)
        os.makedirs(d, exist_ok=True)
        st, expected = builder()
        texts = [render(st, 0, title), render(st, 1, title)]
        for i, t in enumerate(texts):
            write(os.path.join(d, "scrape-%d.prom" % i), t)
        write(os.path.join(d, "expected.json"), json.dumps(expected, indent=2) + "\n")
        parsed = [parse_prom(t, "%s/scrape-%d.prom" % (name, i)) for i, t in enumerate(texts)]
        hidden, shown = derive(parsed[0], parsed[1], ambient)
        if hidden != expected["edges"]:
            ok = False
            print("MISMATCH %s edges:\n derived=%s\n expected=%s" % (
                name, json.dumps(hidden), json.dumps(expected["edges"])))
        if ambient and shown != expected["waypoint_edges"]:
            ok = False
            print("MISMATCH %s waypoint_edges:\n derived=%s\n expected=%s" % (
                name, json.dumps(shown), json.dumps(expected["waypoint_edges"])))
        nser = sum(len(x["samples"]) for x in parsed[1].values())
        print("%s: %d samples per scrape, %d edges%s; strict parse + re-derivation OK" % (
            name, nser, len(expected["edges"]),
            (", %d waypoint_edges" % len(expected["waypoint_edges"])) if ambient else ""))
        if promtool:
            for i in range(2):
                p = os.path.join(d, "scrape-%d.prom" % i)
                with open(p) as fh:
                    r = subprocess.run([promtool, "check", "metrics"], stdin=fh,
                                       capture_output=True, text=True)
                out = (r.stdout + r.stderr).strip()
                lines = out.splitlines()
                print("promtool check metrics < %s/scrape-%d.prom -> exit %d, %d line(s)%s" % (
                    name, i, r.returncode, len(lines),
                    "".join("\n    " + x for x in sorted(set(lines)))))
        else:
            print("promtool not found; strict stdlib parser only")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
