# Sourced by scripts/test-py310 and scripts/check-minimums (not run on its own): finds a
# Python 3.10 interpreter for the floor's test passes.
#
# find_py310 sets PY to $PYTHON310 if set, else `python3.10` on PATH, else a pyenv 3.10.x, the
# first that is a working 3.10 with venv/ensurepip; when none is usable, it leaves PY empty and
# sets WHY to the reason (for a one-line "NOT TESTED" message).

is_py310() {
  "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' >/dev/null 2>&1
}

find_py310() {
  PY=""
  WHY="no python3.10 on PATH and no pyenv 3.10.x"
  local candidates=() root cand
  if [ -n "${PYTHON310:-}" ]; then
    candidates+=("$PYTHON310")
  fi
  if command -v python3.10 >/dev/null 2>&1; then
    candidates+=("$(command -v python3.10)")
  fi
  for root in "${PYENV_ROOT:-}" "${HOME:-/root}/.pyenv" /root/.pyenv; do
    if [ -n "$root" ] && [ -d "$root/versions" ]; then
      for cand in "$root"/versions/3.10.*/bin/python; do
        [ -x "$cand" ] && candidates+=("$cand")
      done
    fi
  done
  for cand in ${candidates[@]+"${candidates[@]}"}; do
    if ! is_py310 "$cand"; then
      WHY="$cand is not a working Python 3.10"
    elif ! "$cand" -c 'import venv, ensurepip' >/dev/null 2>&1; then
      WHY="$cand has no venv/ensurepip module (Debian: apt-get install python3.10-venv)"
    else
      PY=$cand
      return 0
    fi
  done
  return 0
}
