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
# Safe to run twice: a service that is already running and healthy is left alone.
# One function per service; later issues add start_filemon / start_procmon.
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

ensure_dirs() { mkdir -p "$LOG_DIR" "$PID_DIR" "$DATA_DIR"; }

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
  # setsid: the backend gets its own process group (pgid = pid), so `make stop` can end it
  # and anything it spawned by that one id.
  PORT="$PORT" DB_URL="sqlite:///$DATA_DIR/watcher.db" LOG_LEVEL="${LOG_LEVEL:-INFO}" \
    setsid "$exe" </dev/null >>"$LOG_DIR/$svc.log" 2>&1 &
  pid=$!
  echo "$pid" >"$PID_DIR/$svc.pid"
  echo "$PORT" >"$PID_DIR/$svc.port"

  if ! wait_healthy "$pid" "$PORT" "$HEALTH_TIMEOUT"; then
    log "last lines of .run/logs/$svc.log:"
    tail -n 30 "$LOG_DIR/$svc.log" | sed 's/^/[run]     /'
    rm -f "$PID_DIR/$svc.pid" "$PID_DIR/$svc.port"
    if pid_alive "$pid"; then
      kill -TERM -- "-$pid" 2>/dev/null || true
      die "backend did not answer GET /health within ${HEALTH_TIMEOUT}s (stopped it again)"
    fi
    die "backend exited during startup (log above)"
  fi
  log "backend is up (pid $pid)"
  BACKEND_PORT="$PORT"
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
  echo "  Try:        curl -H \"Authorization: Bearer \$WATCHER_READER_TOKEN\" $base/api/os-1/hw1/202012345"
  echo "              (after: set -a; . $TOKENS_FILE; set +a)"
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
  print_summary
}

BACKEND_PORT="$PORT"
main "$@"
