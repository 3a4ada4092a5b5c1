"""`make images` / `make push` (scripts/images.sh): the docker commands they run, and a clear
failure where no container engine is reachable (as on the development machines)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from .conftest import ROOT


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "scripts/images.sh", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def commands(out: str) -> list[str]:
    return [line[2:] for line in out.splitlines() if line.startswith("+ ")]


def test_build_defaults_are_the_seed_images() -> None:
    res = run("build", DRY_RUN="1")
    assert res.returncode == 0, res.stderr
    assert commands(res.stdout) == [
        f"docker build -f packages/{s}/Dockerfile "
        f"-t harbor.jbnu.ac.kr/jinseok1006/watcher-{s}:0.0.1 ."
        for s in ("backend", "filemon", "procmon")
    ]


def test_make_passes_registry_and_tag() -> None:
    res = subprocess.run(
        ["make", "--no-print-directory", "push", "REGISTRY=reg.example/x", "TAG=1.2.3"],
        cwd=ROOT,
        env={**os.environ, "DRY_RUN": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert commands(res.stdout) == [
        f"docker push reg.example/x/watcher-{s}:1.2.3" for s in ("backend", "filemon", "procmon")
    ]


def test_one_service_and_build_args() -> None:
    res = run("build", "procmon", DRY_RUN="1", DOCKER_BUILD_ARGS="--build-arg BTF_SOURCE=host")
    assert commands(res.stdout) == [
        "docker build -f packages/procmon/Dockerfile "
        "-t harbor.jbnu.ac.kr/jinseok1006/watcher-procmon:0.0.1 --build-arg BTF_SOURCE=host ."
    ]
    assert run("build", "frontend", DRY_RUN="1").returncode != 0
    assert run("deploy").returncode == 2


def test_no_engine_is_a_clear_error(tmp_path: Path) -> None:
    fake = tmp_path / "docker"
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = info ]; then echo "Cannot connect to the Docker daemon" >&2; exit 1; fi\n'
        "echo should-not-run; exit 0\n",
        encoding="utf-8",
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    res = run("build", DOCKER=str(fake))
    assert res.returncode == 1
    assert "no container engine reachable" in res.stderr
    assert "Cannot connect to the Docker daemon" in res.stderr
    assert "should-not-run" not in res.stdout
    res = run("push", DOCKER=str(tmp_path / "missing-docker"))
    assert res.returncode == 1 and "not found" in res.stderr
