"""The Kubernetes manifests: strict schema validation, and the seed's fixed names, sizes,
access modes, ports, labels and privileges (DESIGN.md "Fixed names and ports")."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from .conftest import (
    DEFAULT_REGISTRY,
    DEFAULT_TAG,
    NAMESPACE,
    OPTIONAL_FILES,
    ROOT,
    SEED_FILES,
    SERVICES,
    all_docs,
    containers,
    find,
    load_docs,
    pod_spec,
)

# Oldest and newest Kubernetes API versions the manifests must validate against.
K8S_VERSIONS = ("1.28.0", "1.37.0")
SERVICEMONITOR_SCHEMA = json.loads(
    (Path(__file__).with_name("servicemonitor.schema.json")).read_text(encoding="utf-8")
)


def validate_strict(doc: dict[str, Any]) -> None:
    """kubernetes-validate strict mode (unknown fields fail) for built-in kinds; the vendored
    strict schema for the Prometheus Operator's ServiceMonitor."""
    if doc["apiVersion"] == "monitoring.coreos.com/v1":
        jsonschema.validate(doc, SERVICEMONITOR_SCHEMA)
        return
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("rel", SEED_FILES + OPTIONAL_FILES)
def test_every_manifest_validates_strictly(rel: str) -> None:
    docs = load_docs(ROOT / rel)
    assert docs, f"{rel} has no documents"
    for doc in docs:
        validate_strict(doc)
        assert doc["metadata"]["namespace"] == NAMESPACE


def test_validation_is_really_strict() -> None:
    """A misspelt field must fail, or the tests above prove nothing."""
    doc = find(load_docs(ROOT / "packages/backend/k8s.yaml"), "Deployment", "watcher-backend")
    bad = json.loads(json.dumps(doc))
    bad["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[0], strict=True)
    sm = load_docs(ROOT / OPTIONAL_FILES[0])[0]
    bad_sm = json.loads(json.dumps(sm))
    bad_sm["spec"]["endpoints"][0]["intervall"] = "30s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad_sm, SERVICEMONITOR_SCHEMA)
    bad_sm["spec"]["endpoints"][0] = {"port": "http", "interval": "30 seconds"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad_sm, SERVICEMONITOR_SCHEMA)


def test_seed_pvcs() -> None:
    docs = all_docs()
    for name, size, mode, app in (
        ("watcher-backend-pvc", "10Gi", "ReadWriteOnce", "watcher-backend"),
        ("watcher-filemon-storage-pvc", "30Gi", "ReadWriteMany", "watcher-filemon"),
    ):
        pvc = find(docs, "PersistentVolumeClaim", name)
        assert pvc["spec"]["resources"]["requests"]["storage"] == size
        assert pvc["spec"]["accessModes"] == [mode]
        assert pvc["spec"]["storageClassName"] == "longhorn"
        assert pvc["metadata"]["labels"]["app"] == app
    assert [d["metadata"]["name"] for d in load_docs(ROOT / "packages/backend/k8s-pvc.yaml")] == [
        "watcher-backend-pvc"
    ]
    assert [d["metadata"]["name"] for d in load_docs(ROOT / "packages/filemon/k8s-pvc.yaml")] == [
        "watcher-filemon-storage-pvc"
    ]


def test_seed_workloads_and_services() -> None:
    docs = all_docs()
    backend = find(docs, "Deployment", "watcher-backend")
    assert backend["spec"]["replicas"] == 1
    assert backend["spec"]["strategy"] == {"type": "Recreate"}  # SQLite: never two pods
    for kind, name in (("DaemonSet", "watcher-filemon"), ("DaemonSet", "watcher-procmon")):
        find(docs, kind, name)
    for name, port, app in (
        ("watcher-backend-service", 3000, "watcher-backend"),
        ("watcher-filemon", 9090, "watcher-filemon"),
        ("watcher-procmon", 9090, "watcher-procmon"),
    ):
        svc = find(docs, "Service", name)
        assert svc["spec"]["type"] == "ClusterIP"
        assert [p["port"] for p in svc["spec"]["ports"]] == [port]
        assert [p["protocol"] for p in svc["spec"]["ports"]] == ["TCP"]
        assert svc["spec"]["selector"] == {"app": app}
    # the seed's file -> resources layout
    kinds = {
        rel: sorted((d["kind"], d["metadata"]["name"]) for d in load_docs(ROOT / rel))
        for rel in SEED_FILES[2:]
    }
    assert kinds == {
        "packages/backend/k8s.yaml": [
            ("Deployment", "watcher-backend"),
            ("Service", "watcher-backend-service"),
        ],
        "packages/filemon/k8s.yaml": [
            ("DaemonSet", "watcher-filemon"),
            ("Service", "watcher-filemon"),
        ],
        "packages/procmon/k8s.yaml": [
            ("DaemonSet", "watcher-procmon"),
            ("Service", "watcher-procmon"),
        ],
    }


def workloads() -> list[dict[str, Any]]:
    return [d for d in all_docs() if d["kind"] in ("Deployment", "DaemonSet")]


@pytest.mark.parametrize("svc", SERVICES)
def test_pod_basics(svc: str) -> None:
    """Labels, image, pull secret, probes on /health, resources, NODE_NAME, tokens."""
    w = next(d for d in workloads() if d["metadata"]["name"] == f"watcher-{svc}")
    app = f"watcher-{svc}"
    assert w["metadata"]["labels"]["app"] == app
    assert w["spec"]["selector"]["matchLabels"] == {"app": app}
    assert w["spec"]["template"]["metadata"]["labels"]["app"] == app
    spec = pod_spec(w)
    assert spec["imagePullSecrets"] == [{"name": "watcher-harbor-registry-secret"}]
    assert spec["automountServiceAccountToken"] is False
    main = spec["containers"][0]
    assert len(spec["containers"]) == 1 and main["name"] == app
    assert main["image"] == f"{DEFAULT_REGISTRY}/{app}:{DEFAULT_TAG}"
    port = 3000 if svc == "backend" else 9090
    (cport,) = main["ports"]
    assert cport["containerPort"] == port
    for probe in ("readinessProbe", "livenessProbe"):
        get = main[probe]["httpGet"]
        assert get["path"] == "/health"
        assert get["port"] in (cport["name"], port)
    for c in containers(w, init=True):
        res = c["resources"]
        assert set(res["requests"]) == {"cpu", "memory"}, c["name"]
        assert set(res["limits"]) == {"cpu", "memory"}, c["name"]
        assert c["securityContext"]["readOnlyRootFilesystem"] is True, c["name"]
    env = {e["name"]: e for e in main["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    # tokens come from the Secret watcher-tokens, mounted as files
    mounts = {m["name"]: m for m in main["volumeMounts"]}
    vols = {v["name"]: v for v in spec["volumes"]}
    assert vols["tokens"]["secret"]["secretName"] == "watcher-tokens"
    keys = {i["key"] for i in vols["tokens"]["secret"]["items"]}
    roles = {"agent", "reader", "admin"} if svc == "backend" else {"agent"}
    assert keys == roles
    assert mounts["tokens"]["readOnly"] is True
    for role in roles:
        path = env[f"WATCHER_{role.upper()}_TOKEN_FILE"]["value"]
        assert path == f"{mounts['tokens']['mountPath']}/{role}"
        assert f"WATCHER_{role.upper()}_TOKEN" not in env  # never a literal token
    if svc != "backend":
        assert env["API_SERVER"]["value"] == (
            "http://watcher-backend-service.watcher.svc.cluster.local:3000"
        )
        assert env["METRICS_PORT"]["value"] == "9090"
        # worker nodes only
        terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        exprs = terms["nodeSelectorTerms"][0]["matchExpressions"]
        assert {"key": "node-role.kubernetes.io/control-plane", "operator": "DoesNotExist"} in exprs


def test_backend_storage_and_security() -> None:
    w = find(all_docs(), "Deployment", "watcher-backend")
    spec = pod_spec(w)
    main = spec["containers"][0]
    env = {e["name"]: e.get("value") for e in main["env"]}
    assert env["PORT"] == "3000"
    assert env["DB_URL"] == "sqlite:////app/data/watcher.db"
    mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    vols = {v["name"]: v for v in spec["volumes"]}
    assert vols[mounts["/app/data"]]["persistentVolumeClaim"]["claimName"] == "watcher-backend-pvc"
    assert "emptyDir" in vols[mounts["/tmp"]]
    sc = main["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert spec["securityContext"]["fsGroup"] == 10001


def test_filemon_volumes_and_security() -> None:
    w = find(all_docs(), "DaemonSet", "watcher-filemon")
    spec = pod_spec(w)
    main = spec["containers"][0]
    mounts = {m["mountPath"]: m for m in main["volumeMounts"]}
    vols = {v["name"]: v for v in spec["volumes"]}
    codes = mounts["/watcher/codes"]
    assert codes["readOnly"] is True
    nfs = vols[codes["name"]]["nfs"]
    assert nfs["readOnly"] is True and set(nfs) == {"server", "path", "readOnly"}
    snaps = mounts["/watcher/snapshots"]
    claim = vols[snaps["name"]]["persistentVolumeClaim"]["claimName"]
    assert claim == "watcher-filemon-storage-pvc"
    # one directory per node on the shared RWX volume: no two pods share an outbox
    assert snaps["subPathExpr"] == "$(NODE_NAME)"
    env = {e["name"]: e.get("value") for e in main["env"]}
    assert env["WATCH_ROOT"] == "/watcher/codes"
    assert env["SNAPSHOT_BASE"] == "/watcher/snapshots"
    sc = main["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert spec["securityContext"]["supplementalGroups"] == [1000]
    (init,) = spec["initContainers"]
    assert init["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
    assert init["securityContext"]["allowPrivilegeEscalation"] is False
    init_mounts = {m["mountPath"]: m for m in init["volumeMounts"]}
    assert init_mounts["/watcher/snapshots"]["subPathExpr"] == "$(NODE_NAME)"
    assert "NODE_NAME" in {e["name"] for e in init["env"]}
    assert "hostPID" not in spec and "hostNetwork" not in spec


def test_procmon_privileges_and_host_mounts() -> None:
    w = find(all_docs(), "DaemonSet", "watcher-procmon")
    spec = pod_spec(w)
    assert spec["hostPID"] is True
    assert "hostNetwork" not in spec and "hostIPC" not in spec
    main = spec["containers"][0]
    sc = main["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["SYS_ADMIN", "SYS_PTRACE"]}
    assert sc["privileged"] is False
    # the API server refuses allowPrivilegeEscalation: false together with CAP_SYS_ADMIN
    assert sc.get("allowPrivilegeEscalation") is not False
    host = {v["name"]: v["hostPath"] for v in spec["volumes"] if "hostPath" in v}
    mounts = {m["name"]: m for m in main["volumeMounts"]}
    assert host == {
        "btf": {"path": "/sys/kernel/btf", "type": "Directory"},
        "state": {"path": "/var/lib/watcher-procmon", "type": "DirectoryOrCreate"},
    }
    assert mounts["btf"]["mountPath"] == "/sys/kernel/btf" and mounts["btf"]["readOnly"] is True
    env = {e["name"]: e.get("value") for e in main["env"]}
    assert mounts["state"]["mountPath"] == env["STATE_DIR"] == "/var/lib/watcher-procmon"


def test_every_service_selects_pods_and_target_ports_exist() -> None:
    docs = all_docs()
    pods = [
        (
            w["spec"]["template"]["metadata"]["labels"],
            [p for c in containers(w) for p in c["ports"]],
        )
        for w in docs
        if w["kind"] in ("Deployment", "DaemonSet")
    ]
    services = [d for d in docs if d["kind"] == "Service"]
    assert len(services) == 3
    for svc in services:
        sel = svc["spec"]["selector"]
        matched = [ports for labels, ports in pods if sel.items() <= labels.items()]
        assert len(matched) == 1, f"{svc['metadata']['name']} selects {len(matched)} workloads"
        for p in svc["spec"]["ports"]:
            target = p["targetPort"]
            assert any(
                cp["name"] == target or cp["containerPort"] == target for cp in matched[0]
            ), f"{svc['metadata']['name']}: targetPort {target} is not a container port"


def test_servicemonitors_select_the_services() -> None:
    docs = all_docs()
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert {m["metadata"]["name"] for m in monitors} == {f"watcher-{s}" for s in SERVICES}
    for m in monitors:
        sel = m["spec"]["selector"]["matchLabels"]
        hits = [s for s in services.values() if sel.items() <= s["metadata"]["labels"].items()]
        assert len(hits) == 1, m["metadata"]["name"]
        assert m["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
        names = {p["name"] for p in hits[0]["spec"]["ports"]}
        for ep in m["spec"]["endpoints"]:
            assert ep["port"] in names and ep["path"] == "/metrics"


def test_networkpolicy_admits_the_agents_to_the_backend() -> None:
    docs = all_docs()
    pol = find(docs, "NetworkPolicy", "watcher-backend-ingress")
    assert pol["spec"]["podSelector"]["matchLabels"] == {"app": "watcher-backend"}
    (rule,) = pol["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 3000}]
    agents = [f["podSelector"]["matchExpressions"][0] for f in rule["from"] if "podSelector" in f]
    assert agents == [
        {"key": "app", "operator": "In", "values": ["watcher-filemon", "watcher-procmon"]}
    ]


@pytest.mark.parametrize("svc", SERVICES)
def test_manifest_env_vars_are_read_by_the_code(svc: str) -> None:
    """Every variable the manifests set is one the service (or watcher_common) reads."""
    w = next(d for d in workloads() if d["metadata"]["name"] == f"watcher-{svc}")
    names = {e["name"] for e in pod_spec(w)["containers"][0]["env"]}
    code = "\n".join(
        p.read_text(encoding="utf-8")
        for pkg in (svc, "common")
        for p in (ROOT / "packages" / pkg / "src").rglob("*.py")
    )
    templated_tokens = 'f"WATCHER_{role.upper()}_TOKEN"' in code and '_FILE"' in code
    for name in sorted(names):
        literal = f'"{name}"' in code or f"'{name}'" in code
        # the backend builds WATCHER_{ROLE}_TOKEN[_FILE] from the role names
        token_file = bool(re.fullmatch(r"WATCHER_(AGENT|READER|ADMIN)_TOKEN_FILE", name))
        assert literal or (token_file and templated_tokens), f"{name} is not read by {svc}"
