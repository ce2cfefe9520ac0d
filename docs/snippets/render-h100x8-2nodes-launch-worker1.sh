#!/usr/bin/env bash
# Rendered by kimi-deploy 0.1.0: vllm worker on node worker1 (rank 1 of 2).
# Plan candidate vllm-int4-tp8-pp2; install the engine first with install-worker1.sh.
# Worker: start it before the head (head).
set -euo pipefail
here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
set -a
if [ -r "$here"/kimi-deploy.env ]; then . "$here"/kimi-deploy.env; fi
if [ -r "$here"/kimi-deploy-worker1.env ]; then . "$here"/kimi-deploy-worker1.env; fi
set +a
export PATH=/opt/kimi-deploy/venvs/vllm-0.33.0/bin:"$PATH"
require_env() {
    if [ -z "${!1:-}" ]; then
        echo "launch: $1 is not set: put it in kimi-deploy.env or export it before starting" >&2
        exit 2
    fi
}
exec vllm serve /models/moonshotai/Kimi-K2.5 \
    --served-model-name kimi-k2.5 \
    --trust-remote-code \
    --max-model-len 262144 \
    --tensor-parallel-size 8 \
    --pipeline-parallel-size 2 \
    --gpu-memory-utilization 0.9 \
    --max-num-batched-tokens 8192 \
    --max-num-seqs 1024 \
    --override-generation-config '{"temperature":1.0,"top_p":0.95}' \
    --tool-call-parser kimi_k2 \
    --reasoning-parser kimi_k2 \
    --enable-auto-tool-choice \
    --mm-encoder-tp-mode data \
    --distributed-timeout-seconds 1440 \
    --distributed-executor-backend mp \
    --nnodes 2 \
    --node-rank 1 \
    --master-addr 10.0.0.21 \
    --master-port 29500 \
    --headless
