#!/usr/bin/env bash
# Rendered by kimi-deploy 0.1.0: install vllm on node node0.
# Versions pinned in deploy/pins.py (the parser tests use the same pins).
set -euo pipefail

# a venv for vllm
python3 -m venv /opt/kimi-deploy/venvs/vllm-0.33.0

# a current pip
/opt/kimi-deploy/venvs/vllm-0.33.0/bin/python -m pip install --upgrade pip

# vllm at the pinned version
/opt/kimi-deploy/venvs/vllm-0.33.0/bin/python -m pip install vllm==0.33.0

