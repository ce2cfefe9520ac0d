"""Hardware: what a node has, as plain values.

- ``profiles``: GPU specs and node profiles (``hardware/*.yaml``): ``load_profile``, ``profile_from_gpus``.
- ``inventory``: probe this node (GPUs, CPU, RAM, NUMA, disk) into a profile, for `kimi-deploy inventory`.

Imports only the base (``deploy.constants``, ``deploy.errors``, ``deploy.fsutil``, ``deploy.pins``).
"""
