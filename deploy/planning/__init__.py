"""Planning: size every engine x weights variant x layout on a profile, choose one, write plan.json.

- ``architecture``: tensor groups and KV bytes per token, from the catalog.
- ``memory``: per-GPU and per-host memory for one engine, layout and variant.
- ``request``: ``PlanRequest``, the options of a plan (one frozen value, validated when built);
  ``inputs``: what `plan` reads besides it (the hardware profile, the calibration store).
- ``planner``: ``plan(profile, request)``: candidates, ranking and the explanation (never shells out).
- ``contract``: plan.json as plain values, ``load_plan``/``save_plan``: the one contract later stages read;
  ``plan_schema``: its JSON Schema, version and candidate statuses.
- ``report``: the table people read.

Imports the base, ``deploy.catalog``, ``deploy.hardware`` and ``deploy.calibration``.
"""
