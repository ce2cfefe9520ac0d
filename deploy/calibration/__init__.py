"""Calibration: what real starts measured, kept so the next plan predicts from it.

Sits before ``planning`` in the pipeline because the planner reads what it stores.

- ``logs.py``: parsers for the engines' own start-up lines (vLLM on GPU and its CPU build, SGLang,
  llama.cpp): KV cache tokens and bytes, weights per GPU, load/compile/ready times.
  ``parse_startup_log(text, engine="vllm")`` returns ``StartupFacts`` or raises CalibrationError.
- ``store.py``: schema-validated records under ``KIMI_DEPLOY_CACHE/calibration/records.json``, keyed by
  model, engine, engine version, GPU, layout and the knobs that change memory; written atomically under a
  lock (``add_record``, ``load_records``).
"""
