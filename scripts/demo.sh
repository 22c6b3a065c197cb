#!/usr/bin/env bash
# The main job on the embedded default: install, start a local server on the default
# registry directory (SQLite index + ONNX blobs), register the example model and stream
# back random level patterns of difficulty 7.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
PREIMAGE="$PWD/.venv/bin/preimage"
PORT="${PREIMAGE_DEMO_PORT:-$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
export PREIMAGE_SERVER="127.0.0.1:${PORT}"
"$PREIMAGE" serve --address "$PREIMAGE_SERVER" --log-level warning &
SERVER_PID=$!
trap 'kill -TERM "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null || true' EXIT
"$PREIMAGE" health --wait 60
REF="$("$PREIMAGE" register examples/difficulty/difficulty.onnx --name difficulty)"
echo "registered ${REF}"
"$PREIMAGE" invert "$REF" --target 7 -n 20 --tolerance 1e-3 --seed 7
