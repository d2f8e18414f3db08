#!/usr/bin/env bash
# Deploy modelship's cloud stacks to the LocalStack on 127.0.0.1:4566 and push the default model.
#
#   make localstack-up && make deploy-local
#
# 1. builds the Lambda layers for THIS host's architecture: LocalStack's process executor runs the
#    function natively (tests/localstack_executor), so an arm64 onnxruntime cannot run on x86_64;
# 2. cdklocal bootstrap + cdklocal deploy of the model-store and inference-API stacks, stage "local";
# 3. modelship export-default + modelship push into the deployed bucket (boto3 honours AWS_ENDPOINT_URL);
# 4. writes .localstack/deployment.json (for the tests) and .localstack/env.sh (for the user's shell:
#    LocalStack's endpoint, test credentials, MODELSHIP_STORE), and prints the DNS-free invoke URL and
#    ready commands.
#
# One line per step; the tools' whole output goes to .localstack/deploy-local.log, whose last lines are
# printed if a step fails. Nothing here needs Docker, DNS or the internet.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Paths are printed as the user would type them from where they ran this.
PROGRESS_BASE="${PWD}"
cd "${ROOT}"
# shellcheck source=scripts/lib/bounded.sh
source "${ROOT}/scripts/lib/bounded.sh"
# shellcheck source=scripts/lib/cdk.sh
source "${ROOT}/scripts/lib/cdk.sh"

STATE_DIR="${LOCALSTACK_STATE_DIR:-${ROOT}/.localstack}"
PORT="${LOCALSTACK_PORT:-4566}"
ENDPOINT="http://127.0.0.1:${PORT}"
STAGE="${MODELSHIP_LOCAL_STAGE:-local}"
# LocalStack community does not check SigV4 signatures, so the default IAM auth serves plain curl.
AUTH="${MODELSHIP_LOCAL_AUTH:-iam}"
DEPLOYMENT_FILE="${STATE_DIR}/deployment.json"
ENV_FILE="${STATE_DIR}/env.sh"
OUTPUTS_FILE="${STATE_DIR}/cdk-outputs.json"
MODEL_DIR="${STATE_DIR}/default-model"
LOG="${STATE_DIR}/deploy-local.log"
PY="${ROOT}/.venv/bin/python"
MODELSHIP="${ROOT}/.venv/bin/modelship"
CDKLOCAL="${ROOT}/node_modules/.bin/cdklocal"
COMMAND_TIMEOUT="${DEPLOY_LOCAL_TIMEOUT:-900}"

log() { printf 'deploy-local: %s\n' "$*" >&2; }

case "$(uname -m)" in
  x86_64 | amd64) ARCH=x86_64 ;;
  aarch64 | arm64) ARCH=arm64 ;;
  *) log "unsupported host architecture $(uname -m)"; exit 1 ;;
esac

cdk_environment "${ROOT}"
# LocalStack, with fake credentials, and no DNS: both endpoint variables (cdklocal refuses one alone).
# env.sh gives the user's shell the same (write_env_file).
export AWS_ENDPOINT_URL="${ENDPOINT}"
export AWS_ENDPOINT_URL_S3="${ENDPOINT}"
export AWS_ACCESS_KEY_ID=test
export AWS_SECRET_ACCESS_KEY=test
export AWS_DEFAULT_REGION=us-east-1
export AWS_REGION=us-east-1
export CDK_DEFAULT_ACCOUNT=000000000000
export CDK_DEFAULT_REGION=us-east-1

[[ -x "${PY}" ]] || { log "no ${PY}: run 'make venv'"; exit 1; }
[[ -x "${CDKLOCAL}" ]] || { log "no ${CDKLOCAL}: run 'make node'"; exit 1; }
if ! curl --silent --fail --max-time 3 --noproxy '*' "${ENDPOINT}/_localstack/health" >/dev/null; then
  log "LocalStack is not answering on ${ENDPOINT}: run 'make localstack-up' first"
  exit 1
fi
mkdir -p "${STATE_DIR}"
rm -f "${DEPLOYMENT_FILE}" "${ENV_FILE}"
progress_init deploy-local "${LOG}"

LAYER_DIR="${ROOT}/layers/build/${ARCH}"
CONTEXT=(
  -c "stage=${STAGE}"
  -c "architecture=${ARCH}"
  -c "auth=${AUTH}"
  -c "removal=destroy"
  -c "onnx_layer_zip=${LAYER_DIR}/onnx-layer.zip"
  -c "deps_layer_zip=${LAYER_DIR}/deps-layer.zip"
)
STORE_STACK="modelship-${STAGE}-store"
API_STACK="modelship-${STAGE}-api"
STACKS=("${STORE_STACK}" "${API_STACK}")
# Our own cloud assembly folder: the CDK CLI locks cdk.out, which `make synth` may be using.
# (--progress is a deploy option only: bootstrap and destroy answer it with "Unknown option(s)".)
CDK_OPTIONS=(--output "${STATE_DIR}/cdk.out" --no-notices)

stack_exists() {
  "${PY}" - "$1" <<'PYTHON'
import sys

import boto3
from botocore.exceptions import ClientError

try:
    stacks = boto3.client("cloudformation").describe_stacks(StackName=sys.argv[1])["Stacks"]
except ClientError:
    sys.exit(1)
sys.exit(0 if stacks and stacks[0]["StackStatus"] != "DELETE_COMPLETE" else 1)
PYTHON
}

# Find what was deployed from CloudFormation itself, not from output names that may change.
describe_deployment() {
  "${PY}" - "${STAGE}" "${DEPLOYMENT_FILE}" "${ENDPOINT}" "${STACKS[@]}" <<'PYTHON'
import json
import sys

import boto3

stage_context, deployment_file, endpoint, *stacks = sys.argv[1:]
cloudformation = boto3.client("cloudformation")
resources: dict[str, list[str]] = {}
for stack in stacks:
    for page in cloudformation.get_paginator("list_stack_resources").paginate(StackName=stack):
        for resource in page["StackResourceSummaries"]:
            resources.setdefault(resource["ResourceType"], []).append(resource["PhysicalResourceId"])


def only(resource_type: str) -> str:
    found = resources.get(resource_type, [])
    if len(found) != 1:
        sys.exit(f"deploy-local: expected one {resource_type} in {stacks}, found {found}")
    return found[0]


lambda_client = boto3.client("lambda")
configurations = [
    lambda_client.get_function_configuration(FunctionName=name) for name in resources.get("AWS::Lambda::Function", [])
]
inference = [config for config in configurations if config.get("Handler") == "inference.app.handler"]
if len(inference) != 1:
    sys.exit(f"deploy-local: expected one inference function, found {[c['FunctionName'] for c in inference]}")
function = inference[0]
api_id = only("AWS::ApiGateway::RestApi")
stages = [item["stageName"] for item in boto3.client("apigateway").get_stages(restApiId=api_id)["item"]]
stage = stage_context if stage_context in stages else stages[0]
store = function.get("Environment", {}).get("Variables", {}).get("MODELSHIP_STORE", "")
if not store.startswith("s3://"):
    sys.exit(f"deploy-local: the function's MODELSHIP_STORE is {store!r}, not an s3:// store")
# The API invokes an alias (a published version), not $LATEST.
aliases = [alias["Name"] for alias in lambda_client.list_aliases(FunctionName=function["FunctionName"])["Aliases"]]
deployment = {
    "endpoint": endpoint,
    "rest_api_id": api_id,
    "stage": stage,
    # The DNS-free form: <id>.execute-api.localhost.localstack.cloud (CDK's EndpointUrl) needs DNS.
    "base_url": f"{endpoint}/restapis/{api_id}/{stage}/_user_request_",
    "bucket": store.removeprefix("s3://").split("/", 1)[0],
    "store": store,
    "function_name": function["FunctionName"],
    "alias": "live" if "live" in aliases else (aliases[0] if aliases else None),
    "stacks": stacks,
    "env_file": deployment_file.rsplit("/", 1)[0] + "/env.sh",
}
with open(deployment_file, "w") as file:
    json.dump(deployment, file, indent=2)
PYTHON
}

deployment_value() {
  "${PY}" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "${DEPLOYMENT_FILE}" "$1"
}

iris_in_store() {
  timeout 120 "${MODELSHIP}" list --json --store "${STORE}" \
    | "${PY}" -c 'import json, sys; sys.exit(0 if json.load(sys.stdin).get("iris") else 1)'
}

push_iris() {
  timeout 300 "${MODELSHIP}" push "${MODEL_DIR}/iris.onnx" --name iris \
    --labels "${MODEL_DIR}/iris.labels.json" --store "${STORE}"
}

record_timings() {
  "${PY}" - "${DEPLOYMENT_FILE}" "$1" "$2" <<'PYTHON'
import json
import sys

path, deploy_ms, total_ms = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(path) as file:
    deployment = json.load(file)
deployment["timings_ms"] = {"cdk_deploy": deploy_ms, "deploy_local_total": total_ms}
with open(path, "w") as file:
    json.dump(deployment, file, indent=2)
PYTHON
}

# What a shell needs to use this deployment: `source .localstack/env.sh`.
write_env_file() {
  local shown
  shown="$(progress_path "${ENV_FILE}")"
  {
    echo "# modelship on LocalStack: \`source ${shown}\` (written by scripts/deploy-local.sh)."
    echo "# Points this shell's AWS tools (boto3, the modelship CLI, the aws CLI) at LocalStack, with its test"
    echo "# credentials; \`localstack_off\` undoes it."
    local name value
    for name in AWS_ENDPOINT_URL AWS_ENDPOINT_URL_S3 AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_DEFAULT_REGION \
      AWS_REGION; do
      printf 'export %s=%q\n' "${name}" "${!name}"
    done
    echo "# A real login's session token would be sent along with the test keys, and a profile's settings apply."
    echo "unset AWS_SESSION_TOKEN AWS_PROFILE"
    echo "# LocalStack is on loopback: never through a proxy (curl and boto3 both read these)."
    # shellcheck disable=SC2016 # expanded when the file is sourced
    printf '%s\n' 'export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,${NO_PROXY}}"' \
      'export no_proxy="127.0.0.1,localhost${no_proxy:+,${no_proxy}}"'
    echo "# The deployed model store: modelship push/list use it when no --store is given."
    printf 'export MODELSHIP_STORE=%q\n' "${STORE}"
    echo "# The API's invoke URL (DNS-free), for curl and \`modelship infer --url \"\$MODELSHIP_URL\"\`."
    printf 'export MODELSHIP_URL=%q\n' "${BASE_URL}"
    value="AWS_ENDPOINT_URL AWS_ENDPOINT_URL_S3 AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_DEFAULT_REGION"
    echo "localstack_off() { unset ${value} AWS_REGION MODELSHIP_STORE MODELSHIP_URL; }"
  } >"${ENV_FILE}"
}

step "building the Lambda layers for ${ARCH} (cached)" \
  bounded "${COMMAND_TIMEOUT}" "${PY}" layers/build_layer.py --arch "${ARCH}"

step "cdklocal bootstrap" \
  bounded "${COMMAND_TIMEOUT}" "${CDKLOCAL}" bootstrap "aws://000000000000/us-east-1" "${CONTEXT[@]}" \
  "${CDK_OPTIONS[@]}"

# LocalStack's CloudFormation cannot update the API stack in place: when the function's published
# version changes it re-creates the live alias ("Alias already exists"), rolls back, and leaves the
# API without a target. The API stack is stateless, so a redeploy replaces it; the model store stack
# (and the models in it) stays.
if stack_exists "${API_STACK}" >>"${LOG}" 2>&1; then
  STEP_HINT="LocalStack could not delete ${API_STACK}; start from a clean LocalStack (it keeps no state): make localstack-down localstack-up deploy-local" \
    step "replacing ${API_STACK}: cdklocal destroy first (LocalStack cannot update it in place)" \
    bounded "${COMMAND_TIMEOUT}" "${CDKLOCAL}" destroy "${API_STACK}" "${CONTEXT[@]}" "${CDK_OPTIONS[@]}" --force
fi

deploy_started="$(progress_now_ms)"
step "cdklocal deploy ${STACKS[*]}" \
  bounded "${COMMAND_TIMEOUT}" "${CDKLOCAL}" deploy "${STACKS[@]}" "${CONTEXT[@]}" "${CDK_OPTIONS[@]}" \
  --progress events --require-approval never --outputs-file "${OUTPUTS_FILE}"
deploy_ms="$(($(progress_now_ms) - deploy_started))"

step "reading the deployment from LocalStack" describe_deployment
STORE="$(deployment_value store)"
BASE_URL="$(deployment_value base_url)"

rm -rf "${MODEL_DIR}"
step "exporting the default iris model" timeout 300 "${MODELSHIP}" export-default "${MODEL_DIR}"
# Versions are immutable: on a redeploy to the same LocalStack, keep the iris already pushed.
if iris_in_store >>"${LOG}" 2>&1; then
  say "iris is already in ${STORE}; not pushing it again"
else
  step "pushing iris to ${STORE}" push_iris
fi

record_timings "${deploy_ms}" "$(($(progress_now_ms) - PROGRESS_STARTED))"
write_env_file

MODEL="$(progress_path "${MODEL_DIR}")"
CLI="$(progress_path "${MODELSHIP}")"
BODY='{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}'
cat <<EOF

modelship is deployed to LocalStack in $(progress_elapsed). Full log: $(progress_path "${LOG}")

  invoke URL:   ${BASE_URL}
  model store:  ${STORE}

Call the API (no credentials needed):

  curl -s ${BASE_URL}/v2/health/live
  curl -s -X POST ${BASE_URL}/v2/models/iris/infer -d '${BODY}'

Use the CLI from your shell: first point it at LocalStack (endpoint, test credentials, MODELSHIP_STORE):

  source $(progress_path "${ENV_FILE}")
  ${CLI} list
  ${CLI} push ${MODEL}/iris.onnx --name my-iris --labels ${MODEL}/iris.labels.json
  ${CLI} infer --url "\$MODELSHIP_URL" --model iris --input input='[[5.1,3.5,1.4,0.2]]'

EOF
