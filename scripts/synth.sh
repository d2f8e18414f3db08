#!/usr/bin/env bash
# Synthesize the CDK app offline (make synth): scripts/synth.sh [cdk synth options, e.g. -c stage=dev]
#
# Prints a few lines (Node check, the step with its time, what the app said, the stacks) and keeps the
# CDK's whole output in a log: build/synth.log (SYNTH_LOG). The cloud assembly goes to cdk.out/
# (SYNTH_OUTDIR). On failure: the log's last lines, its path, and a non-zero exit status.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Paths are printed as the user would type them from where they ran this.
PROGRESS_BASE="${PWD}"
cd "${ROOT}"
# shellcheck source=scripts/lib/cdk.sh
source "${ROOT}/scripts/lib/cdk.sh"

OUTDIR="${SYNTH_OUTDIR:-${ROOT}/cdk.out}"
LOG="${SYNTH_LOG:-${ROOT}/build/synth.log}"
# Called directly, not through npx: npx would add npm's own warnings (e.g. about the user's npmrc).
CDK="${ROOT}/node_modules/.bin/cdk"

cdk_environment "${ROOT}"
[[ -x "${CDK}" ]] || { echo "synth: no ${CDK}: run 'make node'" >&2; exit 1; }
[[ -x "${ROOT}/.venv/bin/python" ]] || { echo "synth: no .venv: run 'make venv'" >&2; exit 1; }

progress_init synth "${LOG}"
step "synthesizing the CDK app into $(progress_path "${OUTDIR}")" \
  "${CDK}" synth --quiet --no-notices --output "${OUTDIR}" "$@"

# What the app itself tells the user (e.g. that the edge stack is skipped), and the CDK's warnings.
grep '^modelship: ' "${LOG}" | sort -u | sed 's/^modelship: /synth: the app says: /' >&2 || true
warnings="$(grep -c '^\[Warning at ' "${LOG}" || true)"
stacks="$("${ROOT}/.venv/bin/python" - "${OUTDIR}/manifest.json" <<'PYTHON'
import json
import sys

with open(sys.argv[1]) as file:
    artifacts = json.load(file).get("artifacts", {})
print(", ".join(name for name, item in artifacts.items() if item.get("type") == "aws:cloudformation:stack"))
PYTHON
)"
echo "synth: ${stacks:-no stacks} synthesized into $(progress_path "${OUTDIR}")/ in $(progress_elapsed)" \
  "(${warnings:-0} warnings); full log: $(progress_path "${LOG}")"
