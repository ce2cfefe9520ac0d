#!/usr/bin/env bash
# Rendered by kimi-deploy 0.1.0: ktransformers head on node kt0 (rank 0 of 1).
# Plan candidate ktransformers-int4-tp4-kt; install the engine first with install-kt0.sh.
set -euo pipefail
here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
set -a
if [ -r "$here"/kimi-deploy.env ]; then . "$here"/kimi-deploy.env; fi
set +a
export PATH=/opt/kimi-deploy/venvs/ktransformers-0.7.2/bin:"$PATH"
require_env() {
    if [ -z "${!1:-}" ]; then
        echo "launch: $1 is not set: put it in kimi-deploy.env or export it before starting" >&2
        exit 2
    fi
}
exec python3 -m sglang.launch_server \
    --model-path /data/models/moonshotai/Kimi-K2.5 \
    --served-model-name kimi-k2.5 \
    --trust-remote-code \
    --context-length 52224 \
    --tp-size 4 \
    --mem-fraction-static 0.752 \
    --chunked-prefill-size 32658 \
    --cuda-graph-max-bs 80 \
    --max-total-tokens 55224 \
    --attention-backend flashinfer \
    --kt-weight-path /data/models/moonshotai/Kimi-K2.5 \
    --kt-method RAWINT4 \
    --kt-cpuinfer 60 \
    --kt-threadpool-count 2 \
    --kt-num-gpu-experts 19 \
    --kt-gpu-prefill-token-threshold 400 \
    --enable-mixed-chunk \
    --enable-p2p-check \
    --disable-shared-experts-fusion \
    --preferred-sampling-params '{"temperature":1.0,"top_p":0.95}' \
    --tool-call-parser kimi_k2 \
    --reasoning-parser kimi_k2 \
    --enable-metrics \
    --host 127.0.0.1 \
    --port 30000
