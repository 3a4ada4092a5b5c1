#!/usr/bin/env bash
# `make run`: start JCode Watcher locally, in the background, on embedded SQLite.
#
# State lives in .run/ (git-ignored):
#   .run/tokens.env          agent/reader/admin bearer tokens (generated once, mode 600)
#   .run/data/watcher.db     the SQLite database
#   .run/logs/<svc>.log      each service's log
#   .run/pids/<svc>.pid      each service's pid (also its process-group id), for `make stop`
#   .run/demo-workspace/     a small demo workspace tree (<subject>-<division>-<id>/<hw>/...)
#
#   .run/filemon/            filemon's SNAPSHOT_BASE (outbox + local state)
#   .run/procmon/            procmon's STATE_DIR (outbox)
#
# Services: backend (PORT, 3000), filemon (WATCH_ROOT = the demo tree, metrics on
# FILEMON_METRICS_PORT, 9090 or the next free port), procmon (metrics on
# PROCMON_METRICS_PORT, 9091 or the next free port; only as root on a kernel with BTF —
# otherwise a message says why and the rest still runs; PROCMON=0 skips it).
# Safe to run twice: a service that is already running and healthy is left alone.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

RUN_DIR="$ROOT/.run"
LOG_DIR="$RUN_DIR/logs"
PID_DIR="$RUN_DIR/pids"
DATA_DIR="$RUN_DIR/data"
TOKENS_FILE="$RUN_DIR/tokens.env"
DEMO_DIR="$RUN_DIR/demo-workspace"
PORT="${PORT:-3000}"
FILEMON_METRICS_PORT="${FILEMON_METRICS_PORT:-9090}"
PROCMON_METRICS_PORT="${PROCMON_METRICS_PORT:-9091}"
HEALTH_TIMEOUT="${HEALTH_TIMEOUT:-60}"

log() { printf '[run] %s\n' "$*"; }
die() { printf '[run] ERROR: %s\n' "$*" >&2; exit 1; }

# ---- helpers ---------------------------------------------------------------------------

pid_alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }

read_pid() { cat "$PID_DIR/$1.pid" 2>/dev/null || true; }

# 0 if something accepts TCP connections on 127.0.0.1:$1
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

http_status() { curl -s -o /dev/null -w '%{http_code}' --max-time 3 "$1" || true; }

health_ok() { [[ "$(http_status "http://127.0.0.1:$1/health")" == "200" ]]; }

describe_port_owner() {
  local owners
  owners="$(fuser -n tcp "$1" 2>/dev/null | tr -s ' ' || true)"
  if [[ -n "${owners// /}" ]]; then
    # shellcheck disable=SC2086  # word-split the pid list on purpose
    ps -o pid=,args= -p $owners 2>/dev/null | sed 's/^/[run]     /' || true
  fi
}

# ---- one-time setup --------------------------------------------------------------------

ensure_dirs() { mkdir -p "$LOG_DIR" "$PID_DIR" "$DATA_DIR" "$RUN_DIR/filemon" "$RUN_DIR/procmon"; }

ensure_tokens() {
  if [[ -f "$TOKENS_FILE" ]]; then
    chmod 600 "$TOKENS_FILE"
    return
  fi
  log "generating bearer tokens into ${TOKENS_FILE#"$ROOT"/} (mode 600)"
  (
    umask 077
    python3 -c 'import secrets
for role in ("AGENT", "READER", "ADMIN"):
    print(f"WATCHER_{role}_TOKEN={secrets.token_urlsafe(32)}")' >"$TOKENS_FILE.tmp"
    mv "$TOKENS_FILE.tmp" "$TOKENS_FILE"
  )
}

load_tokens() {
  set -a
  # shellcheck disable=SC1090  # generated file
  . "$TOKENS_FILE"
  set +a
}

ensure_demo_workspace() {
  local ws="$DEMO_DIR/os-1-202012345"
  [[ -d "$ws" ]] && return
  log "creating a demo workspace in ${DEMO_DIR#"$ROOT"/}"
  mkdir -p "$ws/hw1" "$ws/hw2" "$DEMO_DIR/data-structure-2-202311111/hw1/src"
  cat >"$ws/hw1/hello.c" <<'C'
#include <stdio.h>

int main(void) {
    printf("Hello, JCode!\n");
    return 0;
}
C
  cat >"$ws/hw1/Makefile" <<'MK'
hello: hello.c
	gcc -Wall -o hello hello.c
MK
  cat >"$ws/hw2/main.py" <<'PY'
def fib(n: int) -> int:
    return n if n < 2 else fib(n - 1) + fib(n - 2)


print([fib(i) for i in range(10)])
PY
  cat >"$DEMO_DIR/data-structure-2-202311111/hw1/src/list.c" <<'C'
#include <stdlib.h>

struct node { int value; struct node *next; };

struct node *push(struct node *head, int value) {
    struct node *n = malloc(sizeof *n);
    n->value = value;
    n->next = head;
    return n;
}
C
  printf 'notes with a space in the name\n' >"$ws/hw1/my notes.txt"
}

# ---- services --------------------------------------------------------------------------

# spawn SVC PORT CMD...: start CMD in its own process group (setsid: pgid = pid, so `make
# stop` ends it and anything it spawned by that one id), record its pid and port, wait for
# its /health. 0: up (pid in SPAWNED_PID); 1: no answer in time (stopped again); 2: it
# exited. On 1 and 2 the log's last lines are shown and the pid files removed.
spawn() {
  local svc="$1" port="$2" pid
  shift 2
  setsid "$@" </dev/null >>"$LOG_DIR/$svc.log" 2>&1 &
  pid=$!
  SPAWNED_PID="$pid"
  echo "$pid" >"$PID_DIR/$svc.pid"
  echo "$port" >"$PID_DIR/$svc.port"
  wait_healthy "$pid" "$port" "$HEALTH_TIMEOUT" && return 0
  log "last lines of .run/logs/$svc.log:"
  tail -n 30 "$LOG_DIR/$svc.log" | sed 's/^/[run]     /'
  rm -f "$PID_DIR/$svc.pid" "$PID_DIR/$svc.port"
  if pid_alive "$pid"; then
    kill -TERM -- "-$pid" 2>/dev/null || true
    return 1
  fi
  return 2
}

# start_backend: the FastAPI backend on $PORT with SQLite in .run/data.
start_backend() {
  local svc=backend pid
  pid="$(read_pid "$svc")"
  if pid_alive "$pid"; then
    local port
    port="$(cat "$PID_DIR/$svc.port" 2>/dev/null || echo "$PORT")"
    if wait_healthy "$pid" "$port" 5; then
      log "backend already running (pid $pid, port $port) — leaving it as it is"
      BACKEND_PORT="$port"
      return
    fi
    die "backend process $pid is alive but http://127.0.0.1:$port/health does not answer; see .run/logs/$svc.log, or run 'make stop' and 'make run' again"
  fi
  rm -f "$PID_DIR/$svc.pid" "$PID_DIR/$svc.port"

  if port_open "$PORT"; then
    log "port $PORT is already in use by another process (not started by 'make run'):"
    describe_port_owner "$PORT"
    die "port $PORT is taken; stop that process or choose another port: PORT=3100 make run"
  fi

  local exe="$ROOT/.venv/bin/watcher-backend"
  [[ -x "$exe" ]] || die "$exe not found — is the backend package installed? (bash scripts/install-deps.sh)"

  log "starting backend on port $PORT (log: .run/logs/$svc.log)"
  {
    printf '\n===== %s make run: starting backend on port %s =====\n' "$(date -u +%FT%TZ)" "$PORT"
  } >>"$LOG_DIR/$svc.log"
  local rc=0
  spawn "$svc" "$PORT" env PORT="$PORT" DB_URL="sqlite:///$DATA_DIR/watcher.db" \
    LOG_LEVEL="${LOG_LEVEL:-INFO}" "$exe" || rc=$?
  case "$rc" in
    0) ;;
    1) die "backend did not answer GET /health within ${HEALTH_TIMEOUT}s (stopped it again)" ;;
    *) die "backend exited during startup (log above)" ;;
  esac
  pid="$SPAWNED_PID"
  log "backend is up (pid $pid)"
  BACKEND_PORT="$PORT"
}

# first_free_port START [EXCLUDE]: START, or the next port that nothing listens on.
first_free_port() {
  local port="$1" exclude="${2:-}" tries=0
  while port_open "$port" || [[ "$port" == "$exclude" ]]; do
    port=$((port + 1))
    tries=$((tries + 1))
    ((tries < 100)) || die "no free port in $1..$port"
  done
  echo "$port"
}

# agent_running SVC: 0 (and sets AGENT_PORT) if `make run` already started SVC and its
# /health answers; dies if the process lives but does not answer.
agent_running() {
  local svc="$1" pid port
  pid="$(read_pid "$svc")"
  pid_alive "$pid" || { rm -f "$PID_DIR/$svc.pid" "$PID_DIR/$svc.port"; return 1; }
  port="$(cat "$PID_DIR/$svc.port" 2>/dev/null || true)"
  if [[ -n "$port" ]] && wait_healthy "$pid" "$port" 10; then
    log "$svc already running (pid $pid, metrics port $port) — leaving it as it is"
    AGENT_PORT="$port"
    return 0
  fi
  die "$svc process $pid is alive but its /health does not answer; see .run/logs/$svc.log, or run 'make stop' and 'make run' again"
}

# launch_agent SVC PORT EXE [ARGS...]: start an agent in its own process group with the
# environment already exported by the caller; wait for its /health.
launch_agent() {
  local svc="$1" port="$2" pid
  shift 2
  printf '\n===== %s make run: starting %s (metrics port %s) =====\n' \
    "$(date -u +%FT%TZ)" "$svc" "$port" >>"$LOG_DIR/$svc.log"
  local rc=0
  spawn "$svc" "$port" "$@" || rc=$?
  case "$rc" in
    0) ;;
    1) log "WARNING: $svc did not answer GET /health within ${HEALTH_TIMEOUT}s (stopped it again)"; return 1 ;;
    *) log "WARNING: $svc exited during startup (log above)"; return 1 ;;
  esac
  pid="$SPAWNED_PID"
  log "$svc is up (pid $pid, metrics http://localhost:$port/metrics)"
  AGENT_PORT="$port"
}

# start_filemon: the file agent watching the demo tree, sending to the local backend.
start_filemon() {
  local svc=filemon port
  FILEMON_URL=""
  if agent_running "$svc"; then
    FILEMON_URL="http://localhost:$AGENT_PORT"
    FILEMON_PORT_USED="$AGENT_PORT"
    return
  fi
  local exe="$ROOT/.venv/bin/watcher-filemon"
  [[ -x "$exe" ]] || die "$exe not found — is the filemon package installed? (bash scripts/install-deps.sh)"
  port="$(first_free_port "$FILEMON_METRICS_PORT")"
  [[ "$port" == "$FILEMON_METRICS_PORT" ]] ||
    log "port $FILEMON_METRICS_PORT is taken — filemon's metrics go to port $port instead"
  log "starting filemon on ${DEMO_DIR#"$ROOT"/} (log: .run/logs/$svc.log)"
  if WATCH_ROOT="$DEMO_DIR" SNAPSHOT_BASE="$RUN_DIR/filemon" METRICS_PORT="$port" \
    API_SERVER="http://127.0.0.1:$BACKEND_PORT" NODE_NAME="${NODE_NAME:-local}" \
    LOG_LEVEL="${LOG_LEVEL:-INFO}" launch_agent "$svc" "$port" "$exe"; then
    FILEMON_URL="http://localhost:$AGENT_PORT"
    FILEMON_PORT_USED="$AGENT_PORT"
  else
    die "filemon could not start (see .run/logs/$svc.log); the backend keeps running ('make stop' stops it)"
  fi
}

# start_procmon: the exec agent, only as root with BTF (it loads eBPF programs). The demo
# tree is one more container root, so a compile run there under a `jcode-…` hostname
# (unshare --uts, no bind mount) is attributed to its student and assignment.
start_procmon() {
  local svc=procmon port
  PROCMON_URL=""
  PROCMON_NOTE=""
  if [[ "${PROCMON:-1}" == "0" ]]; then
    PROCMON_NOTE="not started (PROCMON=0)"
    return
  fi
  if agent_running "$svc"; then
    PROCMON_URL="http://localhost:$AGENT_PORT"
    return
  fi
  if [[ "$(id -u)" != "0" ]]; then
    PROCMON_NOTE="not started: it loads eBPF programs and needs root (or CAP_BPF + CAP_PERFMON + CAP_SYS_PTRACE); run 'sudo make run' to include it"
    log "procmon: $PROCMON_NOTE"
    return
  fi
  if [[ ! -r /sys/kernel/btf/vmlinux ]]; then
    PROCMON_NOTE="not started: this kernel has no BTF (/sys/kernel/btf/vmlinux); procmon needs a BTF kernel (CONFIG_DEBUG_INFO_BTF=y)"
    log "procmon: $PROCMON_NOTE"
    return
  fi
  local exe="$ROOT/.venv/bin/watcher-procmon"
  [[ -x "$exe" ]] || die "$exe not found — is the procmon package installed? (bash scripts/install-deps.sh)"
  log "building the eBPF object (make -C packages/procmon bpf)"
  if ! make -s -C "$ROOT/packages/procmon" bpf >>"$LOG_DIR/$svc.log" 2>&1; then
    PROCMON_NOTE="not started: 'make -C packages/procmon bpf' failed (needs clang, libbpf-dev, bpftool; see .run/logs/$svc.log)"
    log "procmon: $PROCMON_NOTE"
    return
  fi
  port="$(first_free_port "$PROCMON_METRICS_PORT" "${FILEMON_PORT_USED:-}")"
  [[ "$port" == "$PROCMON_METRICS_PORT" ]] ||
    log "port $PROCMON_METRICS_PORT is taken (or is filemon's) — procmon's metrics go to port $port instead"
  log "starting procmon (log: .run/logs/$svc.log)"
  if STATE_DIR="$RUN_DIR/procmon" METRICS_PORT="$port" \
    API_SERVER="http://127.0.0.1:$BACKEND_PORT" NODE_NAME="${NODE_NAME:-local}" \
    WATCHER_PROCMON_BPF_OBJ="$ROOT/packages/procmon/build/procmon.bpf.o" \
    WATCHER_CONTAINER_ROOTS="/home/coder/project,/workspace/{workspace},$DEMO_DIR/{workspace}" \
    LOG_LEVEL="${LOG_LEVEL:-INFO}" launch_agent "$svc" "$port" "$exe"; then
    PROCMON_URL="http://localhost:$AGENT_PORT"
  else
    PROCMON_NOTE="failed to start (see .run/logs/$svc.log); backend and filemon keep running"
  fi
}

# wait_healthy PID PORT TIMEOUT: poll /health until 200 (0), the process dies or timeout (1).
wait_healthy() {
  local pid="$1" port="$2" timeout="$3" waited=0
  while ((waited < timeout * 4)); do
    if health_ok "$port"; then return 0; fi
    if ! pid_alive "$pid"; then return 1; fi
    sleep 0.25
    waited=$((waited + 1))
  done
  return 1
}

# ---- summary ---------------------------------------------------------------------------

print_summary() {
  local base="http://localhost:${BACKEND_PORT}"
  local ui_status
  ui_status="$(http_status "$base/")"
  echo
  echo "JCode Watcher is running locally."
  echo "  API:        $base   (health: $base/health, metrics: $base/metrics, docs: $base/docs)"
  if [[ "$ui_status" == "404" ]]; then
    echo "  Web UI:     $base/   — not there yet (GET / answers 404): the instructor web UI arrives with issue 6"
  else
    echo "  Web UI:     $base/   (GET / answers HTTP $ui_status)"
  fi
  echo "  Database:   sqlite:///$DATA_DIR/watcher.db"
  echo "  Logs:       $LOG_DIR/"
  echo "  Demo tree:  $DEMO_DIR/  (workspaces <subject>-<division>-<id>/<hw>/...)"
  echo "  Tokens:     $TOKENS_FILE (mode 600; reused on every run)"
  echo "    reader:   $WATCHER_READER_TOKEN"
  echo "    admin:    $WATCHER_ADMIN_TOKEN"
  echo "  filemon:    watching $DEMO_DIR/"
  echo "              metrics $FILEMON_URL/metrics   health $FILEMON_URL/health"
  if [[ -n "$PROCMON_URL" ]]; then
    echo "  procmon:    tracing processes in containers whose hostname starts with 'jcode-'"
    echo "              metrics $PROCMON_URL/metrics   health $PROCMON_URL/health"
  else
    echo "  procmon:    $PROCMON_NOTE"
  fi
  echo "  Try:        edit $DEMO_DIR/os-1-202012345/hw1/hello.c, save, and open $base/ (sign in with the reader token)"
  echo "              curl -H \"Authorization: Bearer \$WATCHER_READER_TOKEN\" $base/api/os-1/hw1/202012345"
  echo "              (after: set -a; . $TOKENS_FILE; set +a)"
  if [[ -n "$PROCMON_URL" ]]; then
    echo "              a compile in a pretend student container (as root), then see it under Builds:"
    echo "              cd $DEMO_DIR/os-1-202012345/hw1 && unshare --uts --fork sh -c 'hostname jcode-os-1-202012345-demo-x; gcc -Wall -o hello hello.c && ./hello'"
  fi
  echo "  Stop:       make stop"
}

main() {
  # idempotent and quick when everything is there; SKIP_INSTALL=1 skips it
  [[ "${SKIP_INSTALL:-0}" == "1" ]] || bash "$ROOT/scripts/install-deps.sh"
  ensure_dirs
  ensure_tokens
  load_tokens
  ensure_demo_workspace
  start_backend
  start_filemon
  start_procmon
  print_summary
}

BACKEND_PORT="$PORT"
FILEMON_URL=""
FILEMON_PORT_USED=""
PROCMON_URL=""
PROCMON_NOTE=""
AGENT_PORT=""
main "$@"
