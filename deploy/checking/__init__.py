"""Checking: does a served model answer the way a Kimi-K2.5 client expects?

- ``suite``: ``run_checks`` over a ``target`` (a plan or a URL); ``calls``: the requests each check sends.
- ``shapes``: response shapes judged on plain dicts; ``result``: verdicts and the report.
- ``toolset``: K2-Vendor-Verifier sample sets; ``trigger``: their trigger F1 against a reference.
- ``providers``: engine and hosted-provider flavors (NIM, Moonshot, Oxen.ai, generic OpenAI): URL, dialect.
- ``meter``: request budget, bounded concurrency, 429 Retry-After, token counts; ``session``: one run.

Imports the stages before it (``deploy.serving`` for readiness and the rendered manifest).
"""
