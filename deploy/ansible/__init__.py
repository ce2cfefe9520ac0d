"""Ansible: run the toolkit's playbooks (``playbooks/``) through ansible-runner, over many nodes.

- ``runner``: ``run_playbook`` with progress from its events and the final stats.

The playbooks call the CLI on each node; this package imports only the base.
"""
