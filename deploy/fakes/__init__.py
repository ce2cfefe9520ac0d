"""Fakes (after checking): test doubles that run as real processes on loopback, for the tests, the docs'
snippets and by hand, never for a deployment.

- ``faultserver``: a fault-injecting engine (`python -m deploy.fakes.faultserver --mode leak-think ...`).
- ``providerserver``: a hosted-provider mimic (`python -m deploy.fakes.providerserver --provider oxen ...`).

Imports the stages before it (``deploy.checking.providers``); no module of the toolkit imports it
(tests/test_layout.py checks), only the tests and scripts/docs_snippets.py do.
"""
