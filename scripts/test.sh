#!/usr/bin/env bash
# The whole test suite, tier by tier:  scripts/test.sh [all|fast|lint|unit|functional|infra|edge|reliability|integration]
#   all   = lint, unit, functional, infra, edge, reliability (bounded fuzzing, load, bandit), then
#           integration (LocalStack up, deploy, test, down)
#   fast  = unit and functional, without the tests marked slow or network
# Every tier runs even if an earlier one failed; the exit status is non-zero if any failed, and the
# last line sums up every pytest run ("N passed, N failed, N skipped").
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${ROOT}"
VENV="${VENV:-.venv}"
PY="${VENV}/bin/python"
REPORTS="${ROOT}/build/test-reports"
mkdir -p "${REPORTS}"
rm -f "${REPORTS}"/*.xml
failed_tiers=()

section() { printf '\n===== %s =====\n' "$*"; }

# A tier with no tests yet (tests/edge until the Greengrass door lands: git keeps no empty folder, and
# pytest exits 5 on an empty one) is reported, not counted as a failure.
pytest_tier() {
  local name="$1"
  shift
  section "${name}"
  if [ ! -d "$1" ]; then
    echo "${name}: no tests yet ($1 does not exist)"
    return
  fi
  "${PY}" -m pytest "$@" -p no:cacheprovider --junitxml="${REPORTS}/${name}.xml"
  local status=$?
  if [ "${status}" -eq 5 ]; then
    echo "${name}: no tests collected"
    status=0
  fi
  [ "${status}" -eq 0 ] || failed_tiers+=("${name}")
}

lint() {
  section "lint"
  local status=0
  "${VENV}/bin/ruff" check . || status=1
  "${VENV}/bin/ruff" format --check . || status=1
  # The core is strict (see [tool.mypy.overrides] in pyproject.toml); the rest is checked normally.
  "${VENV}/bin/mypy" functions edge_greengrass bench tests infra layers scripts || status=1
  # The architecture: the import contracts in pyproject.toml ([tool.importlinter]).
  "${VENV}/bin/lint-imports" --no-cache || status=1
  [ "${status}" -eq 0 ] || failed_tiers+=("lint")
}

integration() {
  section "integration (LocalStack)"
  bash scripts/integration.sh --junitxml="${REPORTS}/integration.xml" || failed_tiers+=("integration")
}

summary() {
  "${PY}" - "${REPORTS}" <<'PYTHON'
import pathlib, sys, xml.etree.ElementTree as ET
totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
for report in sorted(pathlib.Path(sys.argv[1]).glob("*.xml")):
    for suite in ET.parse(report).getroot().iter("testsuite"):
        for key in totals:
            totals[key] += int(suite.get(key, 0))
failed = totals["failures"] + totals["errors"]
passed = totals["tests"] - failed - totals["skipped"]
print(f"\n{passed} passed, {failed} failed, {totals['skipped']} skipped")
PYTHON
}

tier="${1:-all}"
case "${tier}" in
  lint) lint ;;
  unit) pytest_tier unit tests/unit ;;
  functional) pytest_tier functional tests/functional ;;
  infra) pytest_tier infra tests/infra ;;
  edge) pytest_tier edge tests/edge ;;
  reliability) pytest_tier reliability tests/reliability ;;
  integration) integration ;;
  fast)
    pytest_tier unit tests/unit -m "not slow and not network"
    pytest_tier functional tests/functional -m "not slow and not network"
    ;;
  all)
    lint
    pytest_tier unit tests/unit
    pytest_tier functional tests/functional
    pytest_tier infra tests/infra
    pytest_tier edge tests/edge
    pytest_tier reliability tests/reliability
    integration
    ;;
  *)
    echo "usage: scripts/test.sh [all|fast|lint|unit|functional|infra|edge|reliability|integration]" >&2
    exit 2
    ;;
esac

if [ "${#failed_tiers[@]}" -gt 0 ]; then
  section "FAILED: ${failed_tiers[*]}"
  summary
  exit 1
fi
if [ "${tier}" = "lint" ]; then
  echo "lint passed: ruff, ruff format, mypy, lint-imports"
  exit 0
fi
summary
