#!/usr/bin/env bash
# Check that the installed Node can run modelship's CDK tools:  scripts/check-node.sh [--quiet]
#
# The floor is package.json's engines.node: aws-cdk-lib 2.275.0, which the CDK app runs through jsii,
# declares node >= 20.0.0 (the aws-cdk 2.1148.1 CLI only >= 18). Below it: a one-line error, exit 1.
# Node 20 and 21 still work, but the jsii runtime inside aws-cdk-lib's Python package (jsii 1.142) has
# supported only Node 22 and 24 since 2026-10-30, and the CLI's AWS SDK asks for Node >= 22 from January
# 2027: one line says so (unless --quiet). scripts/lib/cdk.sh then silences their multi-line banners.
#
# Exit status: 0 if Node is new enough, 1 if it is older, missing or unreadable.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RECOMMENDED=22
quiet=0
[[ "${1:-}" == "--quiet" ]] && quiet=1

minimum="$(sed -n 's/^ *"node": *">= *\([0-9][0-9]*\).*/\1/p' "${ROOT}/package.json" | head -n1)"
if [[ -z "${minimum}" ]]; then
  echo "check-node: no engines.node (\">=N\") in ${ROOT}/package.json" >&2
  exit 1
fi

fail() {
  echo "modelship's CDK tools need Node >= ${minimum} (found $1): install Node ${RECOMMENDED} or 24" \
    "(nodejs.org, or NodeSource's packages: Debian's own nodejs may be older), then run 'make node'." >&2
  exit 1
}

found="$(node --version 2>/dev/null | head -n1)" || true
if [[ -z "${found}" ]]; then
  fail "no 'node' on PATH"
fi
if [[ ! "${found}" =~ ^v([0-9]+)\.[0-9]+ ]]; then
  fail "'node --version' printed '${found}'"
fi
major="${BASH_REMATCH[1]}"
if ((major < minimum)); then
  fail "${found}"
fi
if ((major < RECOMMENDED && quiet == 0)); then
  echo "note: Node ${found} works, but jsii and the AWS SDK ask for Node >= ${RECOMMENDED}; their warnings are silenced." >&2
fi
exit 0
