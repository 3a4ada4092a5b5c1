#!/usr/bin/env bash
# `make test`: install what is needed, lint, then run every test in the repo with pytest.
# Fails if lint fails, if any test fails, or if pytest collected no tests at all (exit 5).
# Extra arguments are passed to pytest (e.g. `make test PYTEST_ARGS="-k compat -x"`).
# For local iteration only: SKIP_INSTALL=1 skips install-deps, SKIP_LINT=1 skips lint.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export UV_PYTHON_DOWNLOADS="${UV_PYTHON_DOWNLOADS:-never}"

log() { printf '[test] %s\n' "$*"; }

if [[ "${SKIP_INSTALL:-0}" != "1" ]]; then
  log "installing dependencies (scripts/install-deps.sh)"
  bash scripts/install-deps.sh
fi

if [[ "${SKIP_LINT:-0}" == "1" ]]; then
  log "SKIP_LINT=1: not linting (CI always lints)"
else
  log "lint (scripts/lint.sh)"
  bash scripts/lint.sh
fi

log "uv run pytest $*"
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
start=$SECONDS
set +e
uv run --no-sync pytest "$@" 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}
set -e
elapsed=$((SECONDS - start))

# pytest's own final summary line, e.g. "==== 120 passed, 2 skipped in 41.3s ====".
# (with -q there are no '=' borders, so match both forms)
summary="$(grep -E '(passed|failed|errors?|skipped|no tests ran|deselected).* in [0-9.]+s' "$out" \
  | tail -n 1 | sed -E 's/^=+ //; s/ =+$//' || true)"
echo
case "$rc" in
  0) log "PASS (${elapsed}s): ${summary:-pytest printed no summary line}" ;;
  5) log "FAIL: pytest collected no tests (exit 5) — an empty test run is an error: ${summary}" ;;
  *) log "FAIL (pytest exit $rc, ${elapsed}s): ${summary:-pytest printed no summary line}" ;;
esac
exit "$rc"
