#!/usr/bin/env bash
# Idempotent installer for everything `make run`, `make test`, `make bench` and `.ci/run` need.
#
#   1. uv (from PyPI via pip) if it is not on PATH;
#   2. Debian packages from APT_PACKAGES that are missing (apt-get update only when needed);
#   3. the uv workspace: `uv sync --locked` (CI) or, locally, `uv sync` if the lock must change.
#
# Nothing is downloaded from anywhere but PyPI and the Debian archive.
# Set SKIP_APT=1 to skip step 2 (e.g. on a machine where you are not root).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# Debian packages the project needs. Later issues append to this list
# (e.g. clang libbpf-dev bpftool for procmon, gcc g++ default-jdk-headless vim nano for the
# end-to-end student-pod simulation, chromium for UI tests).
APT_PACKAGES=(
  postgresql    # server binaries (initdb, pg_ctl, postgres) for the PostgreSQL test harness
  zstd          # inspecting compressed blobs by hand
  curl          # health checks in scripts/run-local.sh
  wrk           # HTTP load generator for bench/
  prometheus    # promtool: checks /metrics exposition format
  util-linux    # unshare, taskset (bench pinning)
  procps        # ps, kill (pid-file based start/stop)
  psmisc        # fuser (who holds a port)
  clang         # procmon: compiles bpf/procmon.bpf.c (build time only)
  libbpf-dev    # procmon: bpf_helpers.h / bpf_core_read.h for the BPF build
  libbpf1       # procmon: libbpf.so.1, loaded at run time through ctypes
  bpftool       # procmon: dumps vmlinux.h from /sys/kernel/btf/vmlinux
  make          # procmon: make -C packages/procmon bpf
  gcc           # procmon tests: header layout probe and student C workloads
  libc6-dev     # procmon tests: libc/pthread headers + linux/types.h for the C probes
  g++ default-jdk-headless  # procmon tests: g++ multi-file and javac builds + diagnostics
  vim nano tmux git  # filemon tests: real editors (nano driven through tmux), git checkout bursts
  chromium      # instructor UI tests: Playwright drives /usr/bin/chromium headless (no browser download)
)

# uv must never try to download a Python build from outside the allowed registries.
export UV_PYTHON_DOWNLOADS="${UV_PYTHON_DOWNLOADS:-never}"
export DEBIAN_FRONTEND=noninteractive

log() { printf '[install-deps] %s\n' "$*"; }

ensure_uv() {
  if command -v uv >/dev/null 2>&1; then
    log "uv present: $(uv --version)"
    return
  fi
  log "uv not found: installing it from PyPI (python3 -m pip install uv)"
  python3 -m pip install --quiet uv
  hash -r
  if ! command -v uv >/dev/null 2>&1; then
    if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
    hash -r
  fi
  if ! command -v uv >/dev/null 2>&1; then
    local bin
    bin="$(python3 -c 'import uv; print(uv.find_uv_bin())')"
    log "uv installed at $bin but not on PATH: linking /usr/local/bin/uv"
    ln -sf "$bin" /usr/local/bin/uv
  fi
  log "uv installed: $(uv --version)"
}

apt_installed() {
  [[ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null || true)" == "ii "* ]]
}

ensure_apt_packages() {
  if [[ "${SKIP_APT:-0}" == "1" ]]; then
    log "SKIP_APT=1: not checking Debian packages"
    return
  fi
  local missing=() pkg
  for pkg in "${APT_PACKAGES[@]}"; do
    apt_installed "$pkg" || missing+=("$pkg")
  done
  if ((${#missing[@]} == 0)); then
    log "Debian packages present: ${APT_PACKAGES[*]}"
    return
  fi
  if [[ "$(id -u)" != "0" ]]; then
    log "missing Debian packages: ${missing[*]} (run as root, or install them and set SKIP_APT=1)"
    exit 1
  fi
  log "installing missing Debian packages: ${missing[*]}"
  # Packages such as postgresql and prometheus start a service on install; the project starts
  # its own instances (on its own ports), so keep apt from starting daemons here.
  local added_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    added_policy=1
  fi
  local rc=0
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } || rc=$?
  if ((added_policy)); then rm -f /usr/sbin/policy-rc.d; fi
  if ((rc != 0)); then
    log "apt-get failed (exit $rc)"
    exit "$rc"
  fi
}

sync_workspace() {
  if [[ "${CI:-}" == "true" ]]; then
    log "uv sync --locked --all-packages (CI: the committed uv.lock must be up to date)"
    uv sync --locked --all-packages
  elif uv sync --locked --all-packages; then
    log "workspace in sync with uv.lock"
  else
    log "uv.lock is out of date with pyproject.toml: running 'uv sync' to update it (commit uv.lock)"
    uv sync --all-packages
  fi
}

ensure_uv
ensure_apt_packages
sync_workspace
log "done"
