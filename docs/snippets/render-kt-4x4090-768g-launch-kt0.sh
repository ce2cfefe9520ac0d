#!/usr/bin/env bash
# Rendered by kimi-deploy 0.1.0: ktransformers head on node kt0 (rank 0 of 1).
# Plan candidate ktransformers-int4-tp4-kt; install the engine first with install-kt0.sh.
# The plan's kt gpu_prefill_token_threshold (400) is not a flag of SGLang 0.5.23: kvcache-ai's fork takes
# --kt-gpu-prefill-token-threshold; add it there if you run the fork.
set -euo pipefail
here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
set -a
if [ -r "$here"/kimi-deploy.env ]; then . "$here"/kimi-deploy.env; fi
set +a
export PATH=/opt/kimi-deploy/venvs/ktransformers-0.5.0/bin:"$PATH"
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
    --context-length 147456 \
    --tp-size 4 \
    --mem-fraction-static 0.752 \
    --chunked-prefill-size 2048 \
    --cuda-graph-max-bs-decode 80 \
    --max-total-tokens 155694 \
    --attention-backend flashinfer \
    --kt-weight-path /data/models/moonshotai/Kimi-K2.5 \
    --kt-method RAWINT4 \
    --kt-cpuinfer 64 \
    --kt-threadpool-count 2 \
    --kt-num-gpu-experts 0 \
    --tool-call-parser kimi_k2 \
    --reasoning-parser kimi_k2 \
    --enable-metrics \
    --host 127.0.0.1 \
    --port 30000
