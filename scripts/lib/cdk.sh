# shellcheck shell=bash
# cdk_environment ROOT: check Node (scripts/check-node.sh, exits on a too-old one), then export what the
# CDK tools need to run offline and quietly. Sourced by scripts/synth.sh and scripts/deploy-local.sh,
# which also get progress.sh's quiet steps from here.
# shellcheck source=scripts/lib/progress.sh
source "$(dirname "${BASH_SOURCE[0]}")/progress.sh"
cdk_environment() {
  local root="$1" major
  bash "${root}/scripts/check-node.sh" || exit 1
  # The CDK app runs under the dev venv's python (cdk.json's "app").
  export PATH="${root}/.venv/bin:${PATH}"
  # No version check and no telemetry: neither works offline, and both print.
  export CDK_DISABLE_VERSION_CHECK=1
  export CDK_DISABLE_CLI_TELEMETRY=1
  major="$(node --version | sed -n 's/^v\([0-9]*\).*/\1/p')"
  if ((major < 22)); then
    # check-node.sh has said it in one line. Without these, the jsii runtime prints an 11-line
    # end-of-life banner, which jsii's Python side echoes as b'...' bytes literals (its stderr_sink
    # prints any non-JSON line with print(line)), and the AWS SDK prints a NodeVersionSupportWarning.
    # The variable names are the ones jsii's checkNode() and the SDK's emitWarningIfUnsupportedVersion read.
    export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION="${major}"
    export AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED=true
  fi
}
