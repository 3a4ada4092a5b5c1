"""Kustomize (kubectl kustomize, i.e. kustomize v5 from the dev group's kubectl): the base is
exactly the seed's files, the example overlay changes registry, tag, storage class and the
NFS export without editing them, and every optional component renders to valid resources."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from .conftest import (
    COMPONENTS,
    DEFAULT_REGISTRY,
    EXAMPLE_OVERLAY,
    ROOT,
    SEED_FILES,
    all_docs,
    containers,
    find,
    kustomize,
    pod_spec,
)
from .test_manifests import validate_strict


def key(d: dict) -> tuple[str, str]:
    return (d["kind"], d["metadata"]["name"])


def test_base_is_exactly_the_seed_files() -> None:
    rendered = sorted(kustomize(ROOT / "packages"), key=key)
    expected = sorted(all_docs(SEED_FILES), key=key)
    assert rendered == expected


def test_example_overlay_changes_registry_tag_storage_and_nfs() -> None:
    base = all_docs(SEED_FILES)
    docs = kustomize(EXAMPLE_OVERLAY)
    for d in docs:
        validate_strict(d)
    images = {
        c["image"] for d in docs if "template" in d.get("spec", {}) for c in containers(d, True)
    }
    assert images == {
        f"registry.example.org/jcode/watcher-{s}:0.0.2" for s in ("backend", "filemon", "procmon")
    }
    assert not any(DEFAULT_REGISTRY in i for i in images)
    for name in ("watcher-backend-pvc", "watcher-filemon-storage-pvc"):
        assert (
            find(docs, "PersistentVolumeClaim", name)["spec"]["storageClassName"] == "longhorn-ssd"
        )
        assert find(base, "PersistentVolumeClaim", name)["spec"]["storageClassName"] == "longhorn"
    vols = {v["name"]: v for v in pod_spec(find(docs, "DaemonSet", "watcher-filemon"))["volumes"]}
    assert vols["workspaces"]["nfs"] == {
        "server": "10.43.12.34",
        "path": "/pvc-5ba357bc-0000-4000-8000-000000000000",
        "readOnly": True,
    }
    # the rest of filemon's volumes survive the patch
    assert set(vols) == {"workspaces", "snapshots", "tokens", "tmp"}
    kinds = {d["kind"] for d in docs}
    assert {"ServiceMonitor", "NetworkPolicy"} <= kinds


def test_all_components_render(tmp_path: Path) -> None:
    """An overlay with every optional component: valid, and each does what it says."""
    comps = sorted(p.name for p in COMPONENTS.iterdir() if (p / "kustomization.yaml").is_file())
    assert comps == ["inotify-sysctl", "monitoring", "networkpolicy", "procmon-least-privilege"]
    overlay = tmp_path / "all"
    overlay.mkdir()

    def rel(p: Path) -> str:  # kustomize wants relative paths between kustomization roots
        return os.path.relpath(p, overlay)

    lines = ["apiVersion: kustomize.config.k8s.io/v1beta1", "kind: Kustomization", "resources:"]
    lines.append(f"  - {rel(ROOT / 'packages')}")
    lines.append("components:")
    lines += [f"  - {rel(COMPONENTS / c)}" for c in comps]
    (overlay / "kustomization.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    docs = kustomize(overlay)
    for d in docs:
        validate_strict(d)
    filemon = pod_spec(find(docs, "DaemonSet", "watcher-filemon"))
    inits = [c["name"] for c in filemon["initContainers"]]
    assert sorted(inits) == ["inotify-sysctl", "snapshot-dir-owner"]
    procmon = find(docs, "DaemonSet", "watcher-procmon")
    sc = pod_spec(procmon)["containers"][0]["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["BPF", "PERFMON", "SYS_PTRACE"]}
    assert sc["allowPrivilegeEscalation"] is False
    assert pod_spec(procmon)["hostPID"] is True


@pytest.mark.parametrize("comp", ["monitoring", "networkpolicy"])
def test_component_is_one_plain_file(comp: str) -> None:
    """Users without kustomize `kubectl apply -f` the component's one resource file (docs)."""
    kust = yaml.safe_load((COMPONENTS / comp / "kustomization.yaml").read_text(encoding="utf-8"))
    files = sorted(p.name for p in (COMPONENTS / comp).glob("*.yaml"))
    assert kust["kind"] == "Component"
    assert kust["resources"] == [f for f in files if f != "kustomization.yaml"]
    assert len(kust["resources"]) == 1
