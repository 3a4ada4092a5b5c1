#!/usr/bin/env bash
# Same-minute A/B of bench b (batched ingest): another revision's backend against this
# tree's, whole invocations interleaved, so this VM's minute-to-minute swings (±25 %) fall
# on both sides alike. Prints each invocation's runs and median; writes nothing in docs/.
#
#   bash bench/ab_ingest.sh REV [PAIRS]      # e.g. bash bench/ab_ingest.sh a81e480 3
#
# REV is checked out in a temporary git worktree with its own venv (uv sync), and bench b
# (this tree's bench/ingest_batch.py, its knobs apply) runs its backend through
# BENCH_BACKEND_EXE. Run it on a quiet machine: it is a measurement, not a test.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
rev="${1:?usage: bench/ab_ingest.sh REV [PAIRS]}"
pairs="${2:-3}"
wt="$(mktemp -d /tmp/watcher-ab-XXXXXX)"
out="$(mktemp -d /tmp/watcher-ab-out-XXXXXX)"
cleanup() {
  git -C "$ROOT" worktree remove --force "$wt" >/dev/null 2>&1 || true
  rm -rf "$wt" "$out"
}
trap cleanup EXIT

git -C "$ROOT" worktree add --detach "$wt" "$rev" >/dev/null
(cd "$wt" && UV_PYTHON_DOWNLOADS=never uv sync --all-packages -q)
cd "$ROOT"

one() {  # $1 label, $2 backend executable
  local log
  log="$(BENCH_OUT="$out" BENCH_BACKEND_EXE="$2" uv run --no-sync python bench/ingest_batch.py 2>&1 || true)"
  echo "$1: median $(grep -o 'median run): [0-9,.]*' <<<"$log" | grep -o '[0-9,.]*$' || echo '?')" \
    "events/s, runs $(grep -o 'database: \[[0-9, ]*\]' <<<"$log" | grep -o '\[.*\]' || echo '[failed]')"
}
for ((k = 1; k <= pairs; k++)); do
  # alternate which side goes first: a slow drift then favours neither
  if ((k % 2)); then
    one "$rev" "$wt/.venv/bin/watcher-backend"
    one "this tree" "$ROOT/.venv/bin/watcher-backend"
  else
    one "this tree" "$ROOT/.venv/bin/watcher-backend"
    one "$rev" "$wt/.venv/bin/watcher-backend"
  fi
done
