#!/usr/bin/env bash
# bench/serving.py on a GPU machine: the server's engine on CUDA (`preimage serve --device=cuda`),
# onnxruntime in this process still on 1 CPU thread as the Predict baseline. Extra arguments go
# to serving.py, e.g. bench/serving_gpu.sh --client-processes 4 --server-arg=--torch-threads=4
# With a GPU, several client processes are usually needed for the client not to be the limit.
# Needs a server that has the --device flag (issue 10); without it the server refuses to start
# and serving.py prints its error.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE="${PREIMAGE_BENCH_DEVICE:-cuda}"
exec timeout 900 .venv/bin/python bench/serving.py --server-arg=--device="$DEVICE" --label "$DEVICE" \
    --json bench/results/serving_gpu.json --plot bench/results/serving_gpu.png "$@"
