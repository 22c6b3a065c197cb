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
if [[ ",${EXTRAS}," == *",test,"* ]]; then
  # From Debian's archive: Go and Java toolchains for the interop clients (tests/interop/compiled.py),
  # and a real PostgreSQL server for the shared-registry tests (they start throwaway clusters themselves).
  debs=(postgresql protobuf-compiler libprotobuf-dev
        golang-go golang-github-golang-protobuf-1-5-dev golang-google-grpc-dev golang-google-protobuf-dev golang-google-genproto-dev protoc-gen-go protoc-gen-go-grpc
        default-jdk-headless libgrpc-java protobuf-compiler-grpc-java-plugin libprotobuf-java libgoogle-common-protos-java
        libguava-java libnetty-java libnetty-tcnative-java libnetty-tcnative-jni libperfmark-java libgeronimo-annotation-1.3-spec-java)
  missing=()
  for deb in "${debs[@]}"; do
    dpkg-query -W -f='${Status}' "$deb" 2>/dev/null | grep -q "install ok installed" || missing+=("$deb")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
      echo "not installed (the Go/Java interop and shared-registry tests skip, or fail under CI=true): ${missing[*]}" >&2
    fi
  fi
fi
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
