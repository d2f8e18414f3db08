#!/usr/bin/env bash
# Print the absolute path of a real CPython interpreter of the given minor version (e.g. 3.13).
# pyenv shims fail when no pyenv version selects them, and spawned processes may not share our
# environment, so we resolve the real binary once and hand that path around.
set -euo pipefail
want="${1:?usage: find-python.sh MAJOR.MINOR}"
candidates=("python${want}")
if command -v pyenv >/dev/null 2>&1; then
  root="$(pyenv root)"
  for dir in $(ls -d "${root}/versions/${want}"* 2>/dev/null | sort -rV); do
    candidates+=("${dir}/bin/python${want}")
  done
fi
candidates+=("/usr/bin/python${want}" "/usr/local/bin/python${want}")
for candidate in "${candidates[@]}"; do
  if real="$("${candidate}" -c 'import sys; print(sys.executable)' 2>/dev/null)" && [ -n "${real}" ]; then
    echo "${real}"
    exit 0
  fi
done
echo "find-python.sh: no working python${want} found (tried: ${candidates[*]})" >&2
exit 1
