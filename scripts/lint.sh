#!/usr/bin/env bash
# `make lint`: ruff (lint + format check) over the repo, mypy --strict over the typed packages.
# Runs every check and fails at the end if any failed, so one run shows all problems.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export UV_PYTHON_DOWNLOADS="${UV_PYTHON_DOWNLOADS:-never}"

# Every typed package's src/ is type-checked.
MYPY_PATHS=(packages/common/src packages/backend/src packages/filemon/src packages/procmon/src packages/ipynb/src)

failed=()
run() {
  printf '[lint] %s\n' "$*"
  if ! "$@"; then failed+=("$*"); fi
}

run uv run --no-sync ruff check .
run uv run --no-sync ruff format --check .
run uv run --no-sync mypy "${MYPY_PATHS[@]}"

if ((${#failed[@]})); then
  printf '[lint] FAILED: %s\n' "${failed[@]}"
  exit 1
fi
printf '[lint] ok\n'
