#!/usr/bin/env bash
# Rendered by kimi-deploy 0.1.0: vllm head on node node0 (rank 0 of 1).
# Plan candidate vllm-int4-tp8; install the engine first with install-node0.sh.
set -euo pipefail
here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
set -a
if [ -r "$here"/kimi-deploy.env ]; then . "$here"/kimi-deploy.env; fi
set +a
export PATH=/opt/kimi-deploy/venvs/vllm-0.33.0/bin:"$PATH"
require_env() {
    if [ -z "${!1:-}" ]; then
        echo "launch: $1 is not set: put it in kimi-deploy.env or export it before starting" >&2
        exit 2
    fi
}
require_env KIMI_API_KEY
export VLLM_API_KEY="${KIMI_API_KEY}"
exec vllm serve /models/moonshotai/Kimi-K2.5 \
    --served-model-name kimi-k2.5 \
    --trust-remote-code \
    --max-model-len 262144 \
    --tensor-parallel-size 8 \
    --gpu-memory-utilization 0.9 \
    --max-num-batched-tokens 8192 \
    --max-num-seqs 1024 \
    --override-generation-config '{"temperature":1.0,"top_p":0.95}' \
    --tool-call-parser kimi_k2 \
    --reasoning-parser kimi_k2 \
    --enable-auto-tool-choice \
    --mm-encoder-tp-mode data \
    --host 0.0.0.0 \
    --port 8000
