# shellcheck shell=bash
# Quiet steps: one line per step, with its elapsed time, on stderr; the tools' own output goes to a log.
#
#   progress_init NAME LOG        start (or restart) LOG; NAME prefixes every line
#   step "what it does" CMD...    run CMD with its stdout and stderr appended to LOG:
#                                   NAME: what it does ... 12.3s
#                                 on failure: the last 30 lines of LOG, its path, and exit with CMD's status
#                                 (STEP_HINT="..." step ...: one more line to print on failure)
#   say "text"                    a line of its own (also written to LOG)
#   progress_elapsed              seconds since progress_init, e.g. 38.2s
#
# CMD runs in this shell (functions work), in an `||` context: `set -e` does not apply inside it, so a
# function given to step must return its failures itself.
PROGRESS_TAIL_LINES=30

progress_now_ms() { date +%s%3N; }

progress_seconds_since() {
  local ms=$(($(progress_now_ms) - $1))
  printf '%d.%ds' $((ms / 1000)) $(((ms % 1000) / 100))
}

# The path as the user would type it from where they are (PROGRESS_BASE, default: the current directory).
progress_path() {
  local base="${PROGRESS_BASE:-${PWD}}"
  case "$1" in
    "${base}"/*) printf '%s' "${1#"${base}"/}" ;;
    *) printf '%s' "$1" ;;
  esac
}

progress_init() {
  PROGRESS_NAME="$1"
  PROGRESS_LOG="$2"
  PROGRESS_STARTED="$(progress_now_ms)"
  mkdir -p "$(dirname "${PROGRESS_LOG}")"
  printf '%s: started %s in %s\n' "${PROGRESS_NAME}" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "${PWD}" >"${PROGRESS_LOG}"
}

progress_elapsed() { progress_seconds_since "${PROGRESS_STARTED}"; }

say() {
  printf '%s: %s\n' "${PROGRESS_NAME}" "$*" >&2
  printf '%s: %s\n' "${PROGRESS_NAME}" "$*" >>"${PROGRESS_LOG}"
}

# The log's tail and path, then exit STATUS.
progress_fail() {
  local status="$1" log
  log="$(progress_path "${PROGRESS_LOG}")"
  {
    printf '%s: the last %d lines of %s:\n' "${PROGRESS_NAME}" "${PROGRESS_TAIL_LINES}" "${log}"
    tail -n "${PROGRESS_TAIL_LINES}" "${PROGRESS_LOG}" | sed 's/^/    /'
    [[ -n "${STEP_HINT:-}" ]] && printf '%s: %s\n' "${PROGRESS_NAME}" "${STEP_HINT}"
    printf '%s: FAILED (exit status %d) after %s; full log: %s\n' "${PROGRESS_NAME}" "${status}" \
      "$(progress_elapsed)" "${log}"
  } >&2
  exit "${status}"
}

step() {
  local title="$1" started status=0
  shift
  started="$(progress_now_ms)"
  printf '%s: %s ... ' "${PROGRESS_NAME}" "${title}" >&2
  printf '\n===== %s\n$ %s\n' "${title}" "$*" >>"${PROGRESS_LOG}"
  "$@" >>"${PROGRESS_LOG}" 2>&1 || status=$?
  if ((status != 0)); then
    printf 'failed after %s\n' "$(progress_seconds_since "${started}")" >&2
    progress_fail "${status}"
  fi
  printf '%s\n' "$(progress_seconds_since "${started}")" >&2
  printf '===== %s: done in %s\n' "${title}" "$(progress_seconds_since "${started}")" >>"${PROGRESS_LOG}"
}
