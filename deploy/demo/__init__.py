"""The demo: the whole pipeline, for real, on a model small enough for any CPU (`kimi-deploy demo`).

- ``run``: inventory -> plan -> download -> verify -> render -> up -> check -> down on the demo model.
- ``hf``/``hf_convert``: the demo model in Hugging Face format for vLLM's CPU build.

Imports every stage before it; nothing imports the demo but the CLI.
"""
