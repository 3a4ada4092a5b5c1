#!/usr/bin/env bash
# `make bench`: run every benchmark, print its numbers, and rewrite docs/benchmarks.md.
# Numbers, not pass/fail: a benchmark that errors is recorded as failed and the rest go on.
# Select some with BENCHES="a c" make bench; BENCH_NOTE="..." adds a line to the report.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export UV_PYTHON_DOWNLOADS="${UV_PYTHON_DOWNLOADS:-never}"
export BENCH_OUT="${BENCH_OUT:-$ROOT/.run/bench}"

declare -A SCRIPTS=(
  [a]=bench/compat_write.py
  [b]=bench/ingest_batch.py
  [c]=bench/assignment_aggregate.py
  [d]=bench/metrics_cardinality.py
  [e]=bench/ui_pages.py
  [f]=bench/filemon_latency.py
  [g]=bench/filemon_sustained.py
  [h]=bench/filemon_scale.py
  [i]=bench/procmon_rate.py
  [j]=bench/procmon_overhead.py
)
# i and j load eBPF programs: root only (recorded as failed otherwise, the rest goes on).
read -r -a selected <<<"${BENCHES:-a b c d e f g h i j}"

# Results of benchmarks not selected this time stay and are reported with their own date.
mkdir -p "$BENCH_OUT"
for id in "${selected[@]}"; do rm -f "$BENCH_OUT/$id.json"; done
failed=()
for id in "${selected[@]}"; do
  script="${SCRIPTS[$id]:-}"
  [[ -n "$script" ]] || { echo "[bench] unknown benchmark '$id' (${!SCRIPTS[*]})"; exit 2; }
  echo "[bench] ---- $id: uv run python $script"
  uv run --no-sync python "$script" || failed+=("$id")
done

uv run --no-sync python bench/report.py
if ((${#failed[@]})); then
  echo "[bench] these benchmarks could not run to the end: ${failed[*]} (see above and docs/benchmarks.md)"
  exit 1
fi
echo "[bench] done: numbers are in docs/benchmarks.md"
