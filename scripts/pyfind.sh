# Sourced by scripts/test-py and scripts/check-minimums (not run on its own): finds an
# interpreter of one Python version (X.Y) for the extra test passes CI makes beside python3.
#
# find_python X.Y sets PY to $PYTHONXY if set (PYTHON310 for 3.10, PYTHON313 for 3.13), else
# `pythonX.Y` on PATH, else a pyenv X.Y.*, the first that is a working X.Y with venv/ensurepip;
# when none is usable, it leaves PY empty and sets WHY to the reason (for a one-line "NOT
# TESTED" message). ENVVAR is set to the variable's name for that message.

is_python() {  # is_python INTERPRETER X.Y
  "$1" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$2'.split('.'))))" \
    >/dev/null 2>&1
}

find_python() {
  local version=$1 candidates=() root cand
  ENVVAR="PYTHON${version//./}"
  PY=""
  WHY="no python$version on PATH and no pyenv $version.x"
  if [ -n "${!ENVVAR:-}" ]; then
    candidates+=("${!ENVVAR}")
  fi
  if command -v "python$version" >/dev/null 2>&1; then
    candidates+=("$(command -v "python$version")")
  fi
  for root in "${PYENV_ROOT:-}" "${HOME:-/root}/.pyenv" /root/.pyenv; do
    if [ -n "$root" ] && [ -d "$root/versions" ]; then
      for cand in "$root/versions/$version".*/bin/python; do
        [ -x "$cand" ] && candidates+=("$cand")
      done
    fi
  done
  for cand in ${candidates[@]+"${candidates[@]}"}; do
    if ! is_python "$cand" "$version"; then
      WHY="$cand is not a working Python $version"
    elif ! "$cand" -c 'import venv, ensurepip' >/dev/null 2>&1; then
      WHY="$cand has no venv/ensurepip module (Debian: apt-get install python$version-venv)"
    else
      PY=$cand
      return 0
    fi
  done
  return 0
}
