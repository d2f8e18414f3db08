#!/usr/bin/env bash
# The LocalStack integration tests, from a clean LocalStack to none:
#   stop any LocalStack of ours, start a fresh one, run tests/integration (which deploys the real CDK
#   app with scripts/deploy-local.sh), and always stop LocalStack again.
# Exit status: pytest's, except that "no tests collected" (5) is a failure here: these tests must exist.
# Extra arguments go to pytest (e.g. -k binary).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${ROOT}" || exit 1
STATE_DIR="${LOCALSTACK_STATE_DIR:-${ROOT}/.localstack}"
# Bounds the whole pytest run; each request and deploy step has its own, shorter, timeout.
PYTEST_TIMEOUT="${INTEGRATION_TIMEOUT:-1800}"

log() { printf 'integration: %s\n' "$*" >&2; }
# shellcheck source=scripts/lib/bounded.sh
source "${ROOT}/scripts/lib/bounded.sh"

bash scripts/localstack.sh down || { log "could not stop a previous LocalStack"; exit 1; }
trap 'bash scripts/localstack.sh down || true' EXIT

rm -f "${STATE_DIR}/integration-timings.json"
started="$(date +%s%3N)"
bash scripts/localstack.sh up || { log "LocalStack did not start"; exit 1; }
MODELSHIP_LOCALSTACK_START_MS="$(($(date +%s%3N) - started))"
export MODELSHIP_LOCALSTACK_START_MS
log "LocalStack up in ${MODELSHIP_LOCALSTACK_START_MS}ms"

started="$(date +%s)"
status=0
MODELSHIP_REQUIRE_LOCALSTACK=1 bounded "${PYTEST_TIMEOUT}" \
  "${ROOT}/.venv/bin/pytest" tests/integration -m localstack -p no:cacheprovider "$@" || status=$?
log "pytest finished in $(($(date +%s) - started))s with status ${status}"
case "${status}" in
  5) log "no LocalStack tests were collected; they must exist"; status=1 ;;
  124 | 137) log "pytest timed out after ${PYTEST_TIMEOUT}s" ;;
esac
exit "${status}"
