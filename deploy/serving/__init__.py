"""Serving: render a plan into launch files, start and stop the engine, know when it is ready.

- ``argv``: every node's engine command as an argv list; ``render``: scripts, env file, units, manifest.
- ``parser_check``: rendered vLLM/SGLang commands through the engines' real argument parsers.
- ``launch`` (``up``/``down``/``status``), ``target``, ``supervise``, ``readiness``, ``diagnosis``.

Imports the base, ``deploy.planning``, ``deploy.weights`` and ``deploy.engines``.
"""
