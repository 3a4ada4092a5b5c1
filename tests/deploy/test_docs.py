"""docs/deployment.md and docs/deployment.ko.md tell the seed's steps with this project's
real names, files, commands and checks (a renamed file or resource must show up here)."""

from __future__ import annotations

import pytest

from .conftest import OPTIONAL_FILES, ROOT, SEED_FILES, all_docs

DOCS = ("docs/deployment.md", "docs/deployment.ko.md")

MUST_MENTION = (
    "kubectl get storageclass longhorn",
    "kubectl get pv | grep nfs",
    "make images REGISTRY=harbor.jbnu.ac.kr/jinseok1006 TAG=0.0.1",
    "make push",
    "docker login harbor.jbnu.ac.kr",
    "kubectl create namespace watcher",
    "kubectl create secret docker-registry watcher-harbor-registry-secret",
    "kubectl create secret generic watcher-tokens",
    "kubectl get pvc -n watcher",
    "kubectl get all -n watcher",
    "kubectl logs -n watcher -l app=watcher-backend --tail=20",
    "Server starting on port 3000",
    "Database initialized",
    "API endpoints ready",
    "http://watcher-backend-service.watcher.svc.cluster.local:3000/health",
    '"status":"healthy"',
    "kubectl port-forward -n watcher service/watcher-filemon 9090:9090",
    'file_events_total{event_type="create"}',
    'process_events_total{process_name="gcc"}',
    "kubectl get servicemonitor -n watcher",
    "ls /sys/kernel/btf/vmlinux",
    "bpftool",
    "fs.inotify.max_user_watches",
    "/watcher/codes",
    "kubectl rollout undo",
    "DB_URL",
    "postgresql+psycopg://",
    "CloudNativePG",
    "kubectl apply -k deploy/kustomize/overlays/",
    "BTF_SOURCE=host",
)
OTHER_LANGUAGE = {
    "docs/deployment.md": "(deployment.ko.md)",
    "docs/deployment.ko.md": "(deployment.md)",
}


@pytest.mark.parametrize("doc", DOCS)
def test_deployment_guide_covers_the_seed(doc: str) -> None:
    text = (ROOT / doc).read_text(encoding="utf-8")
    assert OTHER_LANGUAGE[doc] in text
    missing = [m for m in MUST_MENTION if m not in text]
    assert not missing, f"{doc} does not mention: {missing}"
    for rel in SEED_FILES + OPTIONAL_FILES:
        assert rel in text, f"{doc} does not name {rel}"
    # the per-directory build commands of the seed, with the repo root as context
    for svc in ("backend", "filemon", "procmon"):
        cmd = (
            f"docker build -t harbor.jbnu.ac.kr/jinseok1006/watcher-{svc}:0.0.1 -f Dockerfile ../.."
        )
        assert cmd in text
    # every resource name and the images exist in the manifests the doc names
    names = {d["metadata"]["name"] for d in all_docs()}
    for name in ("watcher-backend-pvc", "watcher-filemon-storage-pvc", "watcher-backend-service"):
        assert name in text and name in names


def test_readme_links_the_guides() -> None:
    for readme in ("README.md", "README.ko.md"):
        text = (ROOT / readme).read_text(encoding="utf-8")
        assert "docs/deployment" in text, readme
