#!/usr/bin/env bash
# Run LocalStack community on this host, without Docker: scripts/localstack.sh up|down|status
#
# LocalStack runs from its own Python 3.13 virtualenv (.venv-localstack), with the pins it needs and
# our Lambda runtime executor (tests/localstack_executor), which runs each Lambda execution
# environment as a local process. It starts through scripts/localstack_main.py: LocalStack's own main,
# with API Gateway passing request bodies through unchanged, as AWS does. See docs/localstack.md.
#
# up     create the virtualenvs if needed, start LocalStack on 127.0.0.1:4566, wait for health (idempotent)
# down   stop LocalStack by pid (SIGTERM, bounded wait, SIGKILL) and every Lambda process it started (idempotent)
# status say whether it runs, and print its health
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE_DIR="${LOCALSTACK_STATE_DIR:-${ROOT}/.localstack}"
VENV="${LOCALSTACK_VENV:-${ROOT}/.venv-localstack}"
# One virtualenv per Lambda runtime, standing in for the runtime's own boto3 (/var/runtime).
RUNTIMES_DIR="${VENV}/lambda-runtimes"
LAMBDA_RUNTIMES=(python3.13)
EXECUTOR_SRC="${ROOT}/tests/localstack_executor"
LOG_FILE="${STATE_DIR}/localstack.log"
PID_FILE="${STATE_DIR}/localstack.pid"
LAMBDA_WORK_DIR="${STATE_DIR}/lambda"
HOST=127.0.0.1
PORT="${LOCALSTACK_PORT:-4566}"
HEALTH_URL="http://${HOST}:${PORT}/_localstack/health"
START_TIMEOUT="${LOCALSTACK_START_TIMEOUT:-120}"
STOP_TIMEOUT="${LOCALSTACK_STOP_TIMEOUT:-20}"
# What cdklocal bootstrap/deploy and the app need, and no more: two cores are shared.
SERVICES="${LOCALSTACK_SERVICES:-s3,lambda,apigateway,iam,sts,cloudformation,ssm,logs,cloudwatch,ecr,kms}"

# Pins that make localstack-core start on the host (see docs/localstack.md for why each is needed).
LOCALSTACK_PINS=(
  'localstack-core[runtime]==2026.3.0'
  'cbor2<5.7'
  'pyopenssl==24.2.1'
  'cryptography==43.0.3'
  'service_identity<25'
)

log() { printf 'localstack: %s\n' "$*" >&2; }

# The boto3 the Lambda runtime venv gets: the project's own pin, so the function sees what tests see.
boto3_pin() {
  grep -o '"boto3==[0-9.]*"' "${ROOT}/pyproject.toml" | tr -d '"' | head -n1 || true
}

# A fingerprint of what is installed into the venvs, so edits to the executor reinstall it.
install_fingerprint() {
  {
    printf '%s\n' "${LOCALSTACK_PINS[@]}" "$(boto3_pin)" "${LAMBDA_RUNTIMES[@]}"
    find "${EXECUTOR_SRC}" -type f \( -name '*.py' -o -name '*.toml' \) -not -path '*/build/*' -print0 \
      | sort -z | xargs -0 sha256sum
  } | sha256sum | cut -d' ' -f1
}

ensure_venvs() {
  local stamp="${VENV}/.modelship-installed" fingerprint python313
  fingerprint="$(install_fingerprint)"
  if [[ -f "${stamp}" && "$(cat "${stamp}")" == "${fingerprint}" ]]; then
    return 0
  fi
  python313="$(bash "${ROOT}/scripts/find-python.sh" 3.13)"
  if [[ ! -x "${VENV}/bin/python" ]]; then
    log "creating ${VENV} with ${python313}"
    "${python313}" -m venv "${VENV}"
  fi
  log "installing localstack-core and the process executor into ${VENV} (once)"
  "${VENV}/bin/python" -m pip install --quiet --disable-pip-version-check "${LOCALSTACK_PINS[@]}"
  # Not editable: LocalStack runs the installed copy, as it would anyone else's plugin.
  "${VENV}/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps \
    "${EXECUTOR_SRC}"
  rm -rf "${EXECUTOR_SRC}/build" "${EXECUTOR_SRC}"/*.egg-info
  local runtime version
  for runtime in "${LAMBDA_RUNTIMES[@]}"; do
    version="${runtime#python}"
    if [[ ! -x "${RUNTIMES_DIR}/${runtime}/bin/python" ]]; then
      log "creating the Lambda ${runtime} runtime virtualenv"
      "$(bash "${ROOT}/scripts/find-python.sh" "${version}")" -m venv "${RUNTIMES_DIR}/${runtime}"
    fi
    "${RUNTIMES_DIR}/${runtime}/bin/python" -m pip install --quiet --disable-pip-version-check "$(boto3_pin)"
  done
  echo "${fingerprint}" >"${stamp}"
}

# The pid in PID_FILE, if that process is alive and really is our LocalStack (pids get reused).
running_pid() {
  [[ -f "${PID_FILE}" ]] || return 1
  local pid
  pid="$(cat "${PID_FILE}")"
  [[ -n "${pid}" ]] && kill -0 "${pid}" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/${pid}/cmdline" 2>/dev/null | grep -q -e 'localstack_main.py' -e 'localstack.runtime.main' \
    || return 1
  echo "${pid}"
}

healthy() {
  curl --silent --fail --max-time 2 --noproxy '*' "${HEALTH_URL}" >/dev/null 2>&1
}

port_in_use() {
  (exec 3<>"/dev/tcp/${HOST}/${PORT}") 2>/dev/null
}

wait_healthy() {
  local pid="$1" started="$2" waited=0
  while ! healthy; do
    if ! kill -0 "${pid}" 2>/dev/null; then
      log "LocalStack exited during startup; last lines of ${LOG_FILE}:"
      tail -n 30 "${LOG_FILE}" >&2
      rm -f "${PID_FILE}"
      return 1
    fi
    if ((waited >= START_TIMEOUT)); then
      log "not healthy after ${START_TIMEOUT}s; see ${LOG_FILE}. Stopping it."
      tail -n 30 "${LOG_FILE}" >&2
      cmd_down
      return 1
    fi
    if ((waited > 0 && waited % 5 == 0)); then
      log "waiting for ${HEALTH_URL} (${waited}s)"
    fi
    sleep 1
    waited=$((waited + 1))
  done
  log "ready on http://${HOST}:${PORT} in $(($(date +%s) - started))s (pid ${pid}, log ${LOG_FILE})"
}

cmd_up() {
  local pid
  if pid="$(running_pid)"; then
    if healthy; then
      log "already running (pid ${pid})"
      return 0
    fi
    log "starting already (pid ${pid})"
    wait_healthy "${pid}" "$(date +%s)"
    return
  fi
  if port_in_use; then
    log "${HOST}:${PORT} is taken by another process; stop it first (a LocalStack started elsewhere?)"
    return 1
  fi
  ensure_venvs
  local started
  started="$(date +%s)"
  # Community keeps no state across restarts: start from clean Lambda folders, keep the last log.
  mkdir -p "${STATE_DIR}"
  rm -rf "${LAMBDA_WORK_DIR}" "${STATE_DIR}/tmp" "${STATE_DIR}/volume"
  mkdir -p "${LAMBDA_WORK_DIR}" "${STATE_DIR}/tmp" "${STATE_DIR}/volume"
  [[ -f "${LOG_FILE}" ]] && mv -f "${LOG_FILE}" "${LOG_FILE}.1"
  log "starting LocalStack (services: ${SERVICES})"
  # setsid: LocalStack leads its own process group, so down can signal everything it started.
  # A background job of a non-interactive shell is no group leader, so setsid execs in place and
  # $! is LocalStack's own pid.
  (
    cd "${STATE_DIR}"
    exec env \
      GATEWAY_SERVER=hypercorn \
      GATEWAY_LISTEN="${HOST}:${PORT}" \
      SERVICES="${SERVICES}" \
      LOCALSTACK_VOLUME_DIR="${STATE_DIR}/volume" \
      TMPDIR="${STATE_DIR}/tmp" \
      LAMBDA_RUNTIME_EXECUTOR=process \
      LAMBDA_PROCESS_RUNTIMES_DIR="${RUNTIMES_DIR}" \
      LAMBDA_PROCESS_WORK_DIR="${LAMBDA_WORK_DIR}" \
      DNS_ADDRESS=0 \
      SKIP_SSL_CERT_DOWNLOAD=1 \
      DISABLE_EVENTS=1 \
      PERSISTENCE=0 \
      CFN_IGNORE_UNSUPPORTED_RESOURCE_TYPES=1 \
      NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,${NO_PROXY}}" \
      no_proxy="127.0.0.1,localhost${no_proxy:+,${no_proxy}}" \
      setsid "${VENV}/bin/python" "${ROOT}/scripts/localstack_main.py"
  ) </dev/null >>"${LOG_FILE}" 2>&1 &
  pid=$!
  echo "${pid}" >"${PID_FILE}"
  wait_healthy "${pid}" "${started}"
}

# Signal the process groups of the Lambda environments the executor recorded, then forget them.
stop_lambda_environments() {
  local pid_file pgid signal="$1"
  for pid_file in "${LAMBDA_WORK_DIR}"/pids/*.pid; do
    [[ -f "${pid_file}" ]] || continue
    pgid="$(cat "${pid_file}")"
    # Only a group whose leader still is one of our bootstraps: pids get reused.
    if [[ -n "${pgid}" ]] && tr '\0' ' ' <"/proc/${pgid}/cmdline" 2>/dev/null | grep -q 'localstack_process_executor/bootstrap.py'; then
      kill "-${signal}" -- "-${pgid}" 2>/dev/null || true
    fi
    [[ "${signal}" == KILL ]] && rm -f "${pid_file}"
  done
}

cmd_down() {
  local pid waited=0
  if ! pid="$(running_pid)"; then
    rm -f "${PID_FILE}"
    stop_lambda_environments KILL
    log "not running"
    return 0
  fi
  log "stopping LocalStack (pid ${pid})"
  kill -TERM "${pid}" 2>/dev/null || true
  while kill -0 "${pid}" 2>/dev/null && ((waited < STOP_TIMEOUT * 10)); do
    sleep 0.1
    waited=$((waited + 1))
  done
  if kill -0 "${pid}" 2>/dev/null; then
    log "still running after ${STOP_TIMEOUT}s; killing its process group"
  fi
  # The whole group: LocalStack and anything of it that survived SIGTERM.
  kill -KILL -- "-${pid}" 2>/dev/null || true
  stop_lambda_environments TERM
  sleep 0.5
  stop_lambda_environments KILL
  waited=0
  while kill -0 "${pid}" 2>/dev/null && ((waited < 50)); do
    sleep 0.1
    waited=$((waited + 1))
  done
  if kill -0 "${pid}" 2>/dev/null; then
    log "pid ${pid} survived SIGKILL"
    return 1
  fi
  rm -f "${PID_FILE}"
  log "stopped"
}

cmd_status() {
  local pid
  if pid="$(running_pid)"; then
    echo "LocalStack running (pid ${pid}) on http://${HOST}:${PORT}; log ${LOG_FILE}"
    curl --silent --max-time 2 --noproxy '*' "${HEALTH_URL}" && echo
    return 0
  fi
  echo "LocalStack not running"
  return 3
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *)
    echo "usage: $0 up|down|status" >&2
    exit 2
    ;;
esac
