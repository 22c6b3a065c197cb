#!/usr/bin/env bash
# Install preimage (server + test extras) into a virtual environment, pinned by constraints.txt.
# Used verbatim by the README's commands, .ci/run and the Dockerfile.
#   VENV=.venv            where the virtual environment goes
#   PREIMAGE_EXTRAS=server,test   extras to install (the Dockerfile uses "server")
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
EXTRAS="${PREIMAGE_EXTRAS:-server,test}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
# torch first, pinned, so nothing can make pip resolve a different (multi-GB) build.
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -c constraints.txt torch==2.14.1 torchvision==0.29.1
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[${EXTRAS}]"
if [[ ",${EXTRAS}," == *",test,"* ]] && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  # A real PostgreSQL server for the shared-registry tests (they start throwaway clusters themselves).
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  else
    echo "warning: PostgreSQL is not installed; the shared-registry tests will be skipped (run as root to install it)" >&2
  fi
fi
if [[ ",${EXTRAS}," == *",test,"* ]] && command -v npm >/dev/null 2>&1; then
  # Node.js interop client and buf (protos lint/breaking), for the test suite.
  npm ci --prefix tests/interop --no-audit --no-fund --loglevel=error
fi
echo "installed preimage[${EXTRAS}] into ${VENV}"
