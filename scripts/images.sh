#!/usr/bin/env bash
# `make images` / `make push`: build or push the three service images.
#
#   scripts/images.sh build [backend|filemon|procmon ...]   (default: all three)
#   scripts/images.sh push  [backend|filemon|procmon ...]
#
# Images are <REGISTRY>/watcher-<svc>:<TAG> (defaults harbor.jbnu.ac.kr/jinseok1006, 0.0.1),
# built from the repo root with packages/<svc>/Dockerfile (the uv workspace is the context).
# DOCKER picks the client (default docker; podman works too), DOCKER_BUILD_ARGS adds build
# options (e.g. "--platform linux/amd64 --build-arg BTF_SOURCE=host"), DRY_RUN=1 only prints
# the commands. Push needs `docker login <registry host>` first.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

REGISTRY="${REGISTRY:-harbor.jbnu.ac.kr/jinseok1006}"
TAG="${TAG:-0.0.1}"
DOCKER="${DOCKER:-docker}"
SERVICES=(backend filemon procmon)

log() { printf '[images] %s\n' "$*"; }
die() { printf '[images] ERROR: %s\n' "$*" >&2; exit 1; }

usage() { sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

action="${1:-}"
[[ "$action" == build || "$action" == push ]] || { usage >&2; exit 2; }
shift
selected=("$@")
((${#selected[@]})) || selected=("${SERVICES[@]}")
for svc in "${selected[@]}"; do
  [[ " ${SERVICES[*]} " == *" $svc "* ]] || die "unknown service '$svc' (one of: ${SERVICES[*]})"
done

run() {
  printf '+ %s\n' "$*"
  if [[ "${DRY_RUN:-0}" != 1 ]]; then "$@"; fi
}

if [[ "${DRY_RUN:-0}" != 1 ]]; then
  command -v "$DOCKER" >/dev/null 2>&1 \
    || die "'$DOCKER' not found: install the Docker CLI and engine (or set DOCKER=podman)"
  if ! err="$("$DOCKER" info 2>&1 >/dev/null)"; then
    die "no container engine reachable through '$DOCKER' (\`$DOCKER info\` failed: $(printf '%s' "$err" | tail -n 1)). Building and pushing images needs a running Docker engine; run this on a machine that has one (or set DOCKER_HOST)."
  fi
fi

for svc in "${selected[@]}"; do
  image="$REGISTRY/watcher-$svc:$TAG"
  case "$action" in
    build)
      log "building $image (packages/$svc/Dockerfile, context: repo root)"
      # shellcheck disable=SC2086  # DOCKER_BUILD_ARGS is a list of options
      run "$DOCKER" build -f "packages/$svc/Dockerfile" -t "$image" ${DOCKER_BUILD_ARGS:-} .
      ;;
    push)
      log "pushing $image"
      run "$DOCKER" push "$image"
      ;;
  esac
done
log "done: $action ${selected[*]} ($REGISTRY, tag $TAG)"
