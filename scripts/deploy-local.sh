#!/usr/bin/env bash
# Deploy modelship's cloud stacks to the LocalStack on 127.0.0.1:4566 and push the default model.
#
#   make localstack-up && make deploy-local
#
# 1. builds the Lambda layers for THIS host's architecture: LocalStack's process executor runs the
#    function natively (tests/localstack_executor), so an arm64 onnxruntime cannot run on x86_64;
# 2. cdklocal bootstrap + cdklocal deploy of the model-store and inference-API stacks, stage "local";
# 3. modelship export-default + modelship push into the deployed bucket (boto3 honours AWS_ENDPOINT_URL);
# 4. prints the DNS-free invoke URL and a curl command, and writes them to .localstack/deployment.json.
#
# Nothing here needs Docker, DNS or the internet.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${ROOT}"
# shellcheck source=scripts/lib/bounded.sh
source "${ROOT}/scripts/lib/bounded.sh"

STATE_DIR="${LOCALSTACK_STATE_DIR:-${ROOT}/.localstack}"
PORT="${LOCALSTACK_PORT:-4566}"
ENDPOINT="http://127.0.0.1:${PORT}"
STAGE="${MODELSHIP_LOCAL_STAGE:-local}"
# LocalStack community does not check SigV4 signatures, so the default IAM auth serves plain curl.
AUTH="${MODELSHIP_LOCAL_AUTH:-iam}"
DEPLOYMENT_FILE="${STATE_DIR}/deployment.json"
OUTPUTS_FILE="${STATE_DIR}/cdk-outputs.json"
MODEL_DIR="${STATE_DIR}/default-model"
PY="${ROOT}/.venv/bin/python"
CDKLOCAL="${ROOT}/node_modules/.bin/cdklocal"
COMMAND_TIMEOUT="${DEPLOY_LOCAL_TIMEOUT:-900}"

case "$(uname -m)" in
  x86_64 | amd64) ARCH=x86_64 ;;
  aarch64 | arm64) ARCH=arm64 ;;
  *) echo "deploy-local: unsupported host architecture $(uname -m)" >&2; exit 1 ;;
esac

log() { printf 'deploy-local: %s\n' "$*" >&2; }
now_ms() { date +%s%3N; }
elapsed() { echo "$((($(now_ms) - $1)))ms"; }

# LocalStack, with fake credentials, and no DNS: both endpoint variables (cdklocal refuses one alone).
export AWS_ENDPOINT_URL="${ENDPOINT}"
export AWS_ENDPOINT_URL_S3="${ENDPOINT}"
export AWS_ACCESS_KEY_ID=test
export AWS_SECRET_ACCESS_KEY=test
export AWS_DEFAULT_REGION=us-east-1
export AWS_REGION=us-east-1
export CDK_DEFAULT_ACCOUNT=000000000000
export CDK_DEFAULT_REGION=us-east-1
# The CDK app runs under the dev venv's python (cdk.json's "app").
export PATH="${ROOT}/.venv/bin:${PATH}"
# No telemetry and no version check: there is no internet.
export CDK_DISABLE_VERSION_CHECK=1
export CDK_DISABLE_CLI_TELEMETRY=1

[[ -x "${PY}" ]] || { log "no ${PY}: run 'make venv'"; exit 1; }
[[ -x "${CDKLOCAL}" ]] || { log "no ${CDKLOCAL}: run 'make node'"; exit 1; }
if ! curl --silent --fail --max-time 3 --noproxy '*' "${ENDPOINT}/_localstack/health" >/dev/null; then
  log "LocalStack is not answering on ${ENDPOINT}: run 'make localstack-up' first"
  exit 1
fi
mkdir -p "${STATE_DIR}"
rm -f "${DEPLOYMENT_FILE}"
started_all="$(now_ms)"

step="$(now_ms)"
log "building the Lambda layers for ${ARCH} (cached)"
bounded "${COMMAND_TIMEOUT}" "${PY}" layers/build_layer.py --arch "${ARCH}" >&2
LAYER_DIR="${ROOT}/layers/build/${ARCH}"
log "layers ready in $(elapsed "${step}")"

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
CDK_OPTIONS=(--output "${STATE_DIR}/cdk.out" --no-notices --progress events)

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

step="$(now_ms)"
log "cdklocal bootstrap"
bounded "${COMMAND_TIMEOUT}" "${CDKLOCAL}" bootstrap "aws://000000000000/us-east-1" "${CONTEXT[@]}" \
  "${CDK_OPTIONS[@]}" >&2
log "bootstrapped in $(elapsed "${step}")"

# LocalStack's CloudFormation cannot update the API stack in place: when the function's published
# version changes it re-creates the live alias ("Alias already exists"), rolls back, and leaves the
# API without a target. The API stack is stateless, so a redeploy replaces it; the model store stack
# (and the models in it) stays.
if stack_exists "${API_STACK}"; then
  step="$(now_ms)"
  log "replacing ${API_STACK}: cdklocal destroy first (LocalStack cannot update it in place)"
  if ! bounded "${COMMAND_TIMEOUT}" "${CDKLOCAL}" destroy "${API_STACK}" "${CONTEXT[@]}" "${CDK_OPTIONS[@]}" \
    --force >&2; then
    log "LocalStack could not delete ${API_STACK}; start from a clean LocalStack (it keeps no state):"
    log "  make localstack-down localstack-up deploy-local"
    exit 1
  fi
  log "destroyed in $(elapsed "${step}")"
fi

step="$(now_ms)"
log "cdklocal deploy ${STACKS[*]}"
bounded "${COMMAND_TIMEOUT}" "${CDKLOCAL}" deploy "${STACKS[@]}" "${CONTEXT[@]}" "${CDK_OPTIONS[@]}" \
  --require-approval never --outputs-file "${OUTPUTS_FILE}" >&2
deploy_ms="$(($(now_ms) - step))"
log "deployed in ${deploy_ms}ms"

# Find what was deployed from CloudFormation itself, not from output names that may change.
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
    "base_url": f"{endpoint}/restapis/{api_id}/{stage}/_user_request_",
    "bucket": store.removeprefix("s3://").split("/", 1)[0],
    "store": store,
    "function_name": function["FunctionName"],
    "alias": "live" if "live" in aliases else (aliases[0] if aliases else None),
    "stacks": stacks,
}
with open(deployment_file, "w") as file:
    json.dump(deployment, file, indent=2)
PYTHON

STORE="$("${PY}" -c 'import json, sys; print(json.load(open(sys.argv[1]))["store"])' "${DEPLOYMENT_FILE}")"
BASE_URL="$("${PY}" -c 'import json, sys; print(json.load(open(sys.argv[1]))["base_url"])' "${DEPLOYMENT_FILE}")"

step="$(now_ms)"
rm -rf "${MODEL_DIR}"
timeout 300 "${ROOT}/.venv/bin/modelship" export-default "${MODEL_DIR}" >&2
# Versions are immutable: on a redeploy to the same LocalStack, keep the iris already pushed.
if timeout 120 "${ROOT}/.venv/bin/modelship" list --json --store "${STORE}" \
  | "${PY}" -c 'import json, sys; sys.exit(0 if json.load(sys.stdin).get("iris") else 1)'; then
  log "iris is already in ${STORE}; not pushing it again"
else
  log "pushing the default model to ${STORE}"
  timeout 300 "${ROOT}/.venv/bin/modelship" push "${MODEL_DIR}/iris.onnx" --name iris \
    --labels "${MODEL_DIR}/iris.labels.json" --store "${STORE}" >&2
  log "pushed in $(elapsed "${step}")"
fi

"${PY}" - "${DEPLOYMENT_FILE}" "${deploy_ms}" "$(($(now_ms) - started_all))" <<'PYTHON'
import json
import sys

path, deploy_ms, total_ms = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(path) as file:
    deployment = json.load(file)
deployment["timings_ms"] = {"cdk_deploy": deploy_ms, "deploy_local_total": total_ms}
with open(path, "w") as file:
    json.dump(deployment, file, indent=2)
PYTHON

BODY='{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}'
# The explicit Content-Type matters: curl -d defaults to application/x-www-form-urlencoded, and
# LocalStack's gateway re-encodes such bodies as form fields, which mangles JSON (AWS does not).
cat <<EOF

modelship is deployed to LocalStack in $(elapsed "${started_all}") (details: ${DEPLOYMENT_FILE}).

  invoke URL:  ${BASE_URL}/v2/...
  model store: ${STORE}

Try it:

  curl -s ${BASE_URL}/v2/health/live
  curl -s -X POST ${BASE_URL}/v2/models/iris/infer -H 'Content-Type: application/json' -d '${BODY}'

EOF
