#!/usr/bin/env bash
# Install preimage (server + test extras) into a virtual environment, pinned by constraints.txt.
# Used verbatim by the README's commands, .ci/run and the Dockerfile.
#   VENV=.venv            where the virtual environment goes
#   PREIMAGE_EXTRAS=server,test   extras to install (the Dockerfile uses "server")
#   OIP_VENV=.venv-oip    with the test extra: a second venv holding tritonclient[grpc]
#                         (needs protobuf<7, ours is 7), pinned by constraints-oip.txt
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
if [[ ",${EXTRAS}," == *",test,"* ]] && command -v npm >/dev/null 2>&1; then
  # Node.js interop client and buf (protos lint/breaking), for the test suite.
  npm ci --prefix tests/interop --no-audit --no-fund --loglevel=error
fi
if [[ ",${EXTRAS}," == *",test,"* ]]; then
  OIP_VENV="${OIP_VENV:-.venv-oip}"
  if [ ! -x "$OIP_VENV/bin/python" ]; then
    "$PYTHON" -m venv "$OIP_VENV"
  fi
  "$OIP_VENV/bin/python" -m pip install --quiet --disable-pip-version-check -c constraints-oip.txt "tritonclient[grpc]" numpy
fi
echo "installed preimage[${EXTRAS}] into ${VENV}"
