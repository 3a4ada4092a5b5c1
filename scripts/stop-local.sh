#!/usr/bin/env bash
# `make stop`: stop the services `make run` started (by the pids recorded in .run/pids/).
# Each service was started with setsid, so its pid is also its process-group id; the whole
# group gets SIGTERM, then SIGKILL if it has not exited after STOP_TIMEOUT seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PID_DIR="$ROOT/.run/pids"
STOP_TIMEOUT="${STOP_TIMEOUT:-15}"

log() { printf '[stop] %s\n' "$*"; }

stop_service() {
  local svc="$1" pidfile="$PID_DIR/$1.pid" pid waited=0
  pid="$(cat "$pidfile" 2>/dev/null || true)"
  if [[ -z "$pid" ]] || ! kill -0 "$pid" 2>/dev/null; then
    log "$svc: not running"
    rm -f "$pidfile" "$PID_DIR/$svc.port"
    return
  fi
  log "$svc: stopping (pid $pid)"
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null && ((waited < STOP_TIMEOUT * 4)); do
    sleep 0.25
    waited=$((waited + 1))
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$svc: still running after ${STOP_TIMEOUT}s — sending SIGKILL"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile" "$PID_DIR/$svc.port"
  log "$svc: stopped"
}

# Reverse start order: agents first (they keep their outbox), then the backend.
SERVICES=(procmon filemon backend)
for svc in "${SERVICES[@]}"; do
  if [[ -f "$PID_DIR/$svc.pid" ]] || [[ "$svc" == "backend" ]]; then
    stop_service "$svc"
  fi
done
