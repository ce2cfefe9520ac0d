"""Benchmark: load-test a served model through AIPerf and compare it with what the plan expects.

- ``install``: the AIPerf venv in the cache (``kimi-deploy engine install aiperf``), keyed by its pin.
- ``tokenizer``: the deployed model's tokenizer as a local folder AIPerf reads offline (a GGUF's is exported).
- ``aiperf``: one AIPerf run per concurrency point; ``export``: its ``profile_export_aiperf.json``, checked.
- ``scrape``: the engine's ``/metrics`` polled during each point (peak KV usage, queue, preemptions).
- ``slo``: ``--slo`` parsing and capacity; ``report``: the report (JSON and table); ``plot``: the PNG.
- ``run``: ``run_bench`` over a ``deploy.checking.target.CheckTarget``.

Imports the stages before it (``deploy.checking`` for the target and the tool definitions ``check`` uses,
``deploy.planning`` for the plan's expectation, ``deploy.engines`` for the cache helpers).
"""
