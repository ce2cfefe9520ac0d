"""Releases (after checking, benchmark and support): compare, upgrade and roll back releases.

- ``diff``: `plan diff OLD NEW`, what changes between two plans or releases, in operator terms.
- ``journal``: the upgrade journal in the state dir (written atomically at every step).
- ``upgrade``: `upgrade --plan NEW` (weights beside the old, render, switch, start, check, roll back on
  failure), `rollback`, and the recovery of an interrupted upgrade.
- ``gc``: `gc`, removing weights and releases no kept release references.

Reads plan.json, the rendered manifest and the release folders (deploy.serving.release_dir); drives the
earlier stages only through their public functions. Imports the base and every stage up to ``checking``.
"""
