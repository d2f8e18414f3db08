#!/usr/bin/env bash
# make reliability: every reliability and security check, with figures, then docs/reliability.md.
#   bad requests per door, hostile models, the HTTP door under hostile clients, S3 faults, fuzzing,
#   load, bandit. Bounded in time; traffic only to 127.0.0.1. HYPOTHESIS_PROFILE=long for a long fuzz.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${ROOT}"
PY="${VENV:-.venv}/bin/python"
OUT="build/reliability"
mkdir -p "${OUT}"
rm -f "${OUT}"/junit-*.xml
status=0

part() {
  local name="$1"
  shift
  printf '\n===== reliability: %s =====\n' "${name}"
  "${PY}" -m pytest "$@" -p no:cacheprovider -q --junitxml="${OUT}/junit-${name}.xml" || status=1
}

part core tests/unit/test_routes.py tests/unit/test_apigw.py tests/unit/test_protocol.py \
  tests/unit/test_hardening.py tests/unit/test_hostile_models.py tests/unit/test_isolation.py
part http tests/functional/test_local_server.py tests/functional/test_http_hardening.py
part s3 tests/functional/test_s3_faults.py
part tier tests/reliability
"${PY}" scripts/reliability_report.py || status=1
exit "${status}"
