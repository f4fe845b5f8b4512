#!/usr/bin/env bash
# Set up fedprag from nothing: a Python 3.11 virtual environment in .venv with fedprag and its
# pinned dependencies installed in one pip resolve. Re-running is a no-op unless pyproject.toml
# changed. Use: ./bootstrap.sh && .venv/bin/fedprag demo
set -euo pipefail
cd "$(dirname "$0")"
# The interpreter: $PYTHON, else python3.11, else a python3 that is 3.11.
python=${PYTHON:-}
if [ -z "$python" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      python=$candidate
      break
    fi
  done
fi
if [ -z "$python" ] || ! command -v "$python" >/dev/null; then
  echo "bootstrap: no Python 3.11 found; install it or set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
want=$(sha256sum pyproject.toml | cut -c1-16)
stamp=.venv/.fedprag-installed
[ -x .venv/bin/python ] || "$python" -m venv .venv
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: installing fedprag and its pinned dependencies into .venv (a few minutes)..." >&2
  # This machine's pip config lists extra local indexes; their 'is ignored' warnings are noise.
  # pip compiles every installed module to bytecode one file at a time; compileall does it on every core.
  .venv/bin/pip install --quiet --disable-pip-version-check --no-compile -e ".[test]" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  .venv/bin/python -m compileall -q -j 0 .venv/lib/python3.11/site-packages >/dev/null || true  # as pip: a module that does not compile is left to fail at import
  echo "$want" > "$stamp"
fi
