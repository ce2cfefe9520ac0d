"""Stage 6, checking: does a served model answer the way a Kimi-K2.5 client expects?

- ``suite``: ``run_checks`` over a ``target`` (a plan or a URL); ``calls``: the requests each check sends.
- ``shapes``: response shapes judged on plain dicts; ``result``: verdicts and the report.
- ``toolset``: K2-Vendor-Verifier sample sets; ``faultserver``: a fault-injecting server for the tests.

Imports the stages before it (``deploy.serving`` for readiness and the rendered manifest).
"""
