"""Pre-flight: prove the nodes, drivers and fabric before the weights are fetched and before `up`.

``run.preflight(plan)`` gathers facts on this host (the plan's head) and over ssh on the other nodes
(``facts``), checks each node against the plan (``node``), checks the nodes against each other and the
ports between them (``network``), measures the links (``measured``) and returns typed ``result.Check``
rows. Imports the base and ``deploy.weights``.
"""
