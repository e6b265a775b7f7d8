#!/usr/bin/env python3
"""Writes meshlens' Grafana dashboards (dashboards/*.json) from the definitions below.

The JSON files are committed; edit this file and run it (`python3 dashboards/generate.py`), and the
test suite checks that the two agree (`--check`). Only the standard library is used.

Every query reads metrics meshlens exports: its own `meshlens_*` catalogue, the standard
`process_*` metrics, and the product metrics `traces_service_graph_*` and `traces_spanmetrics_*`
(with `service.namespace` and `service.version` as dimensions). The test suite evaluates every
query on a real Prometheus scraping a real meshlens.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCHEMA_VERSION = 41  # Grafana 12
PROM = {"type": "prometheus", "uid": "${datasource}"}
JAEGER = {"type": "jaeger", "uid": "meshlens-jaeger"}

# Service graph and span metrics names.
REQ = "traces_service_graph_request_total"
FAILED = "traces_service_graph_request_failed_total"
SERVER_BUCKET = "traces_service_graph_request_server_seconds_bucket"
CALLS = "traces_spanmetrics_calls_total"
SPAN_BUCKET = "traces_spanmetrics_latency_bucket"


# ---------------------------------------------------------------------------------------------
# Building blocks


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False, table: bool = False) -> dict:
    t = {"datasource": PROM, "expr": expr, "refId": ref, "legendFormat": legend or "__auto"}
    if instant:
        t.update(instant=True, range=False)
    else:
        t.update(instant=False, range=True)
    if table:
        t["format"] = "table"
    return t


def panel(kind: str, title: str, targets: list[dict], grid: tuple[int, int, int, int], unit: str = "short",
          description: str = "", **extra) -> dict:
    x, y, w, h = grid
    p = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": targets[0]["datasource"] if targets else PROM,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
    }
    if kind == "timeseries":
        p["fieldConfig"]["defaults"]["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10,
                                                  "showPoints": "never"}
        p["options"] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "desc"}}
    elif kind == "stat":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "value", "graphMode": "area", "textMode": "auto"}
    elif kind == "bargauge":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "orientation": "horizontal", "displayMode": "gradient", "showUnfilled": True}
    p.update(extra)
    return p


def row(title: str, y: int) -> dict:
    return {"type": "row", "title": title, "collapsed": False, "gridPos": {"x": 0, "y": y, "w": 24, "h": 1},
            "panels": []}


def datasource_var() -> dict:
    return {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []}


def window_var(default: str = "5m") -> dict:
    values = ["1m", "5m", "15m", "1h"]
    return {
        "name": "window", "label": "Window", "type": "custom", "query": ",".join(values),
        "current": {"text": default, "value": default}, "hide": 0,
        "options": [{"text": v, "value": v, "selected": v == default} for v in values],
    }


def query_var(name: str, label: str, query: str, multi: bool = False) -> dict:
    v = {
        "name": name, "label": label, "type": "query", "datasource": PROM,
        "definition": query, "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2, "sort": 1, "hide": 0, "regex": "", "current": {}, "options": [],
        "multi": multi, "includeAll": multi,
    }
    if multi:
        v["allValue"] = ".*"
    return v


def dashboard(uid: str, title: str, description: str, variables: list[dict], panels: list[dict],
              links: list[dict] | None = None) -> dict:
    for i, p in enumerate(panels, start=1):
        p["id"] = i
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["meshlens"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "schemaVersion": SCHEMA_VERSION,
        "time": {"from": "now-30m", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "templating": {"list": variables},
        "annotations": {"list": []},
        "links": links or [{"title": "meshlens dashboards", "type": "dashboards", "tags": ["meshlens"],
                            "asDropdown": True, "includeVars": False, "keepTime": True}],
        "panels": panels,
        "version": 1,
    }


def ratio(failed: str, total: str, by: str = "") -> str:
    """Failed over total; a group with traffic and no failures reads 0, not missing."""
    grp = f" by ({by})" if by else ""
    return (f"(sum{grp} (rate({failed}[$window])) or sum{grp} (rate({total}[$window])) * 0)"
            f" / sum{grp} (rate({total}[$window]))")


def quantile(q: float, bucket: str, by: str = "") -> str:
    grp = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({grp}) (rate({bucket}[$window])))"


# ---------------------------------------------------------------------------------------------
# Mesh overview

def mesh_overview() -> dict:
    sel = '{server_service_namespace=~"$namespace"}'
    req, failed, bucket = REQ + sel, FAILED + sel, SERVER_BUCKET + sel
    all_req = REQ + '{client_service_namespace=~"$namespace"}'
    # One row per service: callees with their incoming rate, callers that are never called with 0.
    def node_rows(side: str, selector: str, scale: str = "") -> str:
        return (f'sum by (id, title) (label_replace(label_replace(sum by ({side}) (rate({selector}[$window])){scale},'
                f' "id", "$1", "{side}", "(.*)"), "title", "$1", "{side}", "(.*)"))')
    nodes = node_rows("server", req) + " or " + node_rows("client", all_req, " * 0")
    edges = (
        f'label_replace(label_replace(label_join(sum by (client, server) (rate({req}[$window])),'
        f' "id", "->", "client", "server"), "source", "$1", "client", "(.*)"), "target", "$1", "server", "(.*)")'
    )
    node_graph = panel(
        "nodeGraph", "Service graph",
        [dict(target(nodes, ref="nodes", instant=True, table=True)),
         dict(target(edges, ref="edges", instant=True, table=True))],
        (0, 17, 24, 12), unit="none",
        description="Nodes and edges from traces_service_graph_request_total; main stat: requests/s.",
        # The node graph reads field names, which a rename does not change (it sets a display
        # name), so `mainstat` is made as a new field; timeSeries false keeps the frames apart.
        transformations=[
            {"id": "calculateField", "options": {"mode": "reduceRow", "reduce": {"reducer": "sum"},
                                                 "alias": "mainstat", "timeSeries": False}},
            {"id": "organize", "options": {"excludeByName": {
                "Time": True, "client": True, "server": True, "Value #nodes": True, "Value #edges": True}}},
        ],
    )
    panels = [
        panel("stat", "Requests/s", [target(f"sum(rate({req}[$window]))", "requests/s")], (0, 0, 6, 5), "reqps",
              "Calls between services of the mesh, from spans."),
        panel("stat", "Success rate", [target("1 - " + ratio(failed, req), "success")], (6, 0, 6, 5), "percentunit",
              "Share of calls that did not fail (5xx, gRPC error or span status ERROR)."),
        panel("stat", "p95 latency", [target(quantile(0.95, bucket), "p95")], (12, 0, 6, 5), "s",
              "95th percentile of server-side call latency across the mesh."),
        panel("stat", "Services", [target(f"count(count by (server) ({req}))", "services")], (18, 0, 6, 5), "none",
              "Services that received calls."),
        panel("timeseries", "Requests/s by service", [target(f"sum by (server) (rate({req}[$window]))", "{{server}}")],
              (0, 5, 12, 6), "reqps"),
        panel("timeseries", "Error ratio by service", [target(ratio(failed, req, "server"), "{{server}}")],
              (12, 5, 12, 6), "percentunit"),
        panel("bargauge", "Top services by errors/s",
              [target(f"topk(10, sum by (server) (rate({failed}[$window])))", "{{server}}", instant=True)],
              (0, 11, 12, 6), "reqps"),
        panel("bargauge", "Top services by p95 latency",
              [target(f"topk(10, {quantile(0.95, bucket, 'server')})", "{{server}}", instant=True)],
              (12, 11, 12, 6), "s"),
        node_graph,
    ]
    return dashboard(
        "meshlens-mesh", "meshlens / Mesh overview",
        "Requests, success rate and latency across the mesh, and the service graph.",
        [datasource_var(),
         query_var("namespace", "Namespace", f"label_values({REQ}, server_service_namespace)", multi=True),
         window_var()],
        panels,
    )


# ---------------------------------------------------------------------------------------------
# Service

def service() -> dict:
    into = '{server="$service", server_service_version=~"$version"}'
    req, failed, bucket = REQ + into, FAILED + into, SERVER_BUCKET + into
    out = '{client="$service", client_service_version=~"$version"}'
    ops = '{service="$service", service_version=~"$version", span_kind="SPAN_KIND_SERVER"}'
    by_v = "server_service_version"
    canary = [
        target(f"sum by ({by_v}) (rate({req}[$window]))", ref="rps", instant=True, table=True),
        target(ratio(failed, req, by_v), ref="errors", instant=True, table=True),
        target(quantile(0.5, bucket, by_v), ref="p50", instant=True, table=True),
        target(quantile(0.95, bucket, by_v), ref="p95", instant=True, table=True),
        target(quantile(0.99, bucket, by_v), ref="p99", instant=True, table=True),
    ]
    columns = {"Value #rps": ("requests/s", "reqps"), "Value #errors": ("error ratio", "percentunit"),
               "Value #p50": ("p50", "s"), "Value #p95": ("p95", "s"), "Value #p99": ("p99", "s")}
    canary_table = panel(
        "table", "Versions side by side", canary, (0, 5, 24, 6), "short",
        "The canary comparison: each version's rate, error ratio and latency over the window.",
        transformations=[
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {
                "excludeByName": {"Time": True},
                "renameByName": {by_v: "version", **{k: name for k, (name, _) in columns.items()}}}},
        ],
    )
    canary_table["fieldConfig"]["overrides"] = [
        {"matcher": {"id": "byName", "options": name}, "properties": [{"id": "unit", "value": unit}]}
        for name, unit in columns.values()
    ]
    traces = {
        "type": "table", "title": "Recent traces of $service",
        "description": "From meshlens' Jaeger API; a trace ID opens the trace.",
        "datasource": JAEGER, "gridPos": {"x": 0, "y": 35, "w": 24, "h": 8},
        "targets": [{"datasource": JAEGER, "refId": "A", "queryType": "search", "service": "$service",
                     "limit": 20}],
        "fieldConfig": {"defaults": {}, "overrides": []}, "options": {},
    }
    panels = [
        panel("stat", "Requests/s", [target(f"sum(rate({req}[$window]))", "requests/s")], (0, 0, 8, 5), "reqps"),
        panel("stat", "Error ratio", [target(ratio(failed, req), "errors")], (8, 0, 8, 5), "percentunit"),
        panel("stat", "p95 latency", [target(quantile(0.95, bucket), "p95")], (16, 0, 8, 5), "s"),
        canary_table,
        panel("timeseries", "Requests/s by version",
              [target(f"sum by ({by_v}) (rate({req}[$window]))", "{{server_service_version}}")], (0, 11, 8, 7), "reqps"),
        panel("timeseries", "Error ratio by version", [target(ratio(failed, req, by_v), "{{server_service_version}}")],
              (8, 11, 8, 7), "percentunit"),
        panel("timeseries", "p95 latency by version",
              [target(quantile(0.95, bucket, by_v), "{{server_service_version}}")], (16, 11, 8, 7), "s"),
        panel("bargauge", "Upstreams (callers), requests/s",
              [target(f"sum by (client) (rate({req}[$window]))", "{{client}}", instant=True)], (0, 18, 12, 7), "reqps"),
        panel("bargauge", "Downstreams (called), requests/s",
              [target(f"sum by (server) (rate({REQ + out}[$window]))", "{{server}}", instant=True)],
              (12, 18, 12, 7), "reqps"),
        panel("timeseries", "Operations, requests/s",
              [target(f"sum by (span_name) (rate({CALLS + ops}[$window]))", "{{span_name}}")], (0, 25, 12, 10), "reqps"),
        panel("timeseries", "Operations, p95 latency",
              [target(quantile(0.95, SPAN_BUCKET + ops, "span_name"), "{{span_name}}")], (12, 25, 12, 10), "s"),
        traces,
    ]
    return dashboard(
        "meshlens-service", "meshlens / Service",
        "One service: rate, errors and latency, its versions side by side, callers, callees, operations and traces.",
        [datasource_var(),
         query_var("service", "Service", f"label_values({REQ}, server)"),
         query_var("version", "Version", f'label_values({REQ}{{server="$service"}}, server_service_version)',
                   multi=True),
         window_var()],
        panels,
    )


# ---------------------------------------------------------------------------------------------
# Policy and quota

def policy() -> dict:
    checks = 'meshlens_policy_checks_total{instance=~"$instance"}'
    refused = checks.replace("}", ', decision=~"deny|rate_limited|over_limit|unavailable"}')
    hits = 'meshlens_policy_quota_hits_total{instance=~"$instance"}'
    over = hits.replace("}", ', outcome=~"over|shadow_over"}')
    duration = 'meshlens_policy_check_duration_seconds_bucket{instance=~"$instance"}'
    panels = [
        panel("stat", "Checks/s", [target(f"sum(rate({checks}[$window]))", "checks/s")], (0, 0, 6, 5), "reqps"),
        panel("stat", "Refused share", [target(ratio(refused, checks), "refused")], (6, 0, 6, 5), "percentunit",
              "Checks answered deny, rate limited, over limit or unavailable."),
        panel("stat", "p99 decision time", [target(quantile(0.99, duration), "p99")], (12, 0, 6, 5), "s",
              "Server-side time to decide a check."),
        panel("stat", "Config loaded", [target('min(meshlens_policy_config_last_reload_successful{instance=~"$instance"})',
                                               "loaded")], (18, 0, 3, 5), "bool_yes_no",
              "1 when every replica's last config load succeeded."),
        panel("stat", "Since last good load",
              [target('time() - max(meshlens_policy_config_last_reload_success_timestamp_seconds{instance=~"$instance"})',
                      "age")], (21, 0, 3, 5), "s"),
        panel("timeseries", "Checks/s by API and decision",
              [target(f"sum by (api, decision) (rate({checks}[$window]))", "{{api}} {{decision}}")],
              (0, 5, 12, 8), "reqps"),
        panel("bargauge", "Denials by rule, quota or limit",
              [target('topk(15, sum by (api, by) (increase(meshlens_policy_denials_total{instance=~"$instance"}[$window])))',
                      "{{api}}: {{by}}", instant=True)], (12, 5, 12, 8), "short"),
        panel("timeseries", "Quota hits/s by limit and outcome",
              [target(f"sum by (limit, outcome) (rate({hits}[$window]))", "{{limit}} {{outcome}}")],
              (0, 13, 12, 8), "reqps"),
        panel("bargauge", "Quota: share of hits over the limit",
              [target(ratio(over, hits, "limit"), "{{limit}}", instant=True)], (12, 13, 12, 8), "percentunit"),
        panel("timeseries", "Decision time by API (p50, p99)",
              [target(quantile(0.5, duration, "api"), "{{api}} p50"),
               target(quantile(0.99, duration, "api"), "{{api}} p99", ref="B")], (0, 21, 12, 8), "s"),
        panel("timeseries", "Audited requests/s by rule",
              [target('sum by (rule) (rate(meshlens_policy_audits_total{instance=~"$instance"}[$window]))', "{{rule}}")],
              (12, 21, 12, 8), "reqps"),
        panel("timeseries", "Quota backend errors/s",
              [target('sum by (instance, backend, kind) (rate(meshlens_policy_backend_errors_total{instance=~"$instance"}[$window]))',
                      "{{instance}} {{backend}} {{kind}}")], (0, 29, 12, 7), "reqps",
              "Checks whose quota backend failed; they failed open or closed as configured."),
        panel("timeseries", "Config reloads",
              [target('sum by (result) (increase(meshlens_policy_config_reloads_total{instance=~"$instance"}[$window]))',
                      "{{result}}")], (12, 29, 12, 7), "short"),
        panel("timeseries", "Over-limit checks answered without Redis/s",
              [target('sum by (instance, api) (rate(meshlens_policy_local_over_limit_answers_total{instance=~"$instance"}[$window]))',
                      "{{instance}} {{api}}")], (0, 36, 12, 7), "reqps",
              "Fixed-window keys Redis said were over their limit, answered from the local record until their "
              "window ends (redis_local_cache_keys)."),
    ]
    return dashboard(
        "meshlens-policy", "meshlens / Policy and quota",
        "ext_authz and rate limit checks: decisions, denials, quota use, decision time, backend health.",
        [datasource_var(),
         query_var("instance", "Instance", "label_values(meshlens_policy_checks_total, instance)", multi=True),
         window_var()],
        panels,
    )


# ---------------------------------------------------------------------------------------------
# meshlens itself

def meshlens_self() -> dict:
    i = '{instance=~"$instance"}'
    commit = "meshlens_store_commit_seconds_bucket" + i
    panels = [
        panel("timeseries", "Spans in/s by protocol",
              [target(f"sum by (protocol) (rate(meshlens_ingest_spans_total{i}[$window]))", "{{protocol}}"),
               target(f"sum(rate(meshlens_store_spans_written_total{i}[$window]))", "committed", ref="B")],
              (0, 0, 12, 7), "short"),
        panel("timeseries", "Metric points in/s by protocol",
              [target(f"sum by (protocol) (rate(meshlens_ingest_metric_points_total{i}[$window]))", "{{protocol}}")],
              (12, 0, 12, 7), "short"),
        panel("timeseries", "Rejections/s by reason",
              [target(f"sum by (protocol, reason) (rate(meshlens_ingest_rejected_spans_total{i}[$window]))",
                      "spans {{protocol}} {{reason}}"),
               target(f"sum by (protocol, reason) (rate(meshlens_ingest_rejected_requests_total{i}[$window]))",
                      "requests {{protocol}} {{reason}}", ref="B"),
               target(f"sum by (protocol, reason) (rate(meshlens_ingest_rejected_metric_points_total{i}[$window]))",
                      "points {{protocol}} {{reason}}", ref="C")],
              (0, 7, 12, 7), "short", "Refused spans, whole requests and metric points, by why."),
        panel("timeseries", "Queue depth (spans)",
              [target(f"max by (instance) (meshlens_ingest_queue_depth{i})", "{{instance}}")], (12, 7, 12, 7), "short",
              "Spans between the receivers and the store writer; at capacity, exports are refused as retryable."),
        panel("timeseries", "Store commit latency",
              [target(quantile(0.5, commit), "p50"), target(quantile(0.99, commit), "p99", ref="B")],
              (0, 14, 12, 7), "s", "Time to write and commit one group of batches."),
        panel("timeseries", "Memory (resident)",
              [target(f"process_resident_memory_bytes{{job=~\"meshlens.*\", instance=~\"$instance\"}}", "{{instance}}")],
              (12, 14, 6, 7), "bytes"),
        panel("timeseries", "CPU",
              [target(f"rate(process_cpu_seconds_total{{job=~\"meshlens.*\", instance=~\"$instance\"}}[$window])",
                      "{{instance}}")], (18, 14, 6, 7), "percentunit", "CPU seconds per second (1 = one core)."),
        panel("timeseries", "Graph: spans by outcome/s",
              [target(f"sum by (outcome) (rate(meshlens_topology_spans_total{i}[$window]))", "{{outcome}}")],
              (0, 21, 12, 7), "short", "paired, expired, evicted, unpaired, dropped (graph queue full)."),
        panel("timeseries", "Graph: edges and spans waiting for their other side",
              [target(f"sum(meshlens_topology_edges{i})", "edges"),
               target(f"sum(meshlens_topology_pending_spans{i})", "pending spans", ref="B")],
              (12, 21, 12, 7), "short"),
    ]
    return dashboard(
        "meshlens-self", "meshlens / meshlens itself",
        "meshlens' own health: ingest, rejections, queue, store, memory, CPU and the graph builder.",
        [datasource_var(),
         query_var("instance", "Instance", "label_values(meshlens_ingest_queue_depth, instance)", multi=True),
         window_var()],
        panels,
    )


DASHBOARDS = {
    "mesh-overview.json": mesh_overview,
    "service.json": service,
    "policy.json": policy,
    "meshlens.json": meshlens_self,
}


def render(build) -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for name, build in DASHBOARDS.items():
        path = HERE / name
        text = render(build)
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)}; run python3 dashboards/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
