"""Support (after checking): a support bundle of one node (versions, inventory, plan, rendered files,
weights status, engine logs, reports, nvidia-smi, the engine's environment report), with every secret
redacted.

- ``bundle``: ``write_bundle(BundleOptions)`` -> a 0600 ``.tar.gz`` with a ``MANIFEST.json``.

Reads plan.json, the rendered folder (its manifest) and the runtime state; imports the base and the earlier
stages' public functions (``deploy.serving`` status and diagnosis, ``deploy.weights.lockfile``).
"""
