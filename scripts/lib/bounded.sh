# shellcheck shell=bash
# bounded SECONDS COMMAND...: run COMMAND with a time limit that Ctrl-C and SIGTERM can still cut short.
#
# GNU timeout runs its command in a process group of its own, so a terminal's Ctrl-C never reaches it,
# and a script stopped mid-way leaves it running. Here timeout runs in the background and this shell
# forwards INT and TERM to it (as TERM: a background command of a non-interactive shell ignores INT);
# timeout passes the signal on to the command's group. The calling script then exits with 130.
bounded() {
  local seconds="$1"
  shift
  timeout --kill-after=30 "${seconds}" "$@" &
  local child=$!
  BOUNDED_SIGNAL=""
  trap 'BOUNDED_SIGNAL=INT; kill -TERM "${child}" 2>/dev/null' INT
  trap 'BOUNDED_SIGNAL=TERM; kill -TERM "${child}" 2>/dev/null' TERM
  local status=0
  while true; do
    wait "${child}" && status=0 || status=$?
    # A trapped signal makes wait return early: keep waiting until the command is really gone.
    kill -0 "${child}" 2>/dev/null || break
  done
  trap - INT TERM
  if [ -n "${BOUNDED_SIGNAL}" ]; then
    echo "interrupted (${BOUNDED_SIGNAL}); stopped: $*" >&2
    exit 130
  fi
  return "${status}"
}
