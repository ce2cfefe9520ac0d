"""Weights: fetch a plan's files through huggingface_hub, lock and verify them, serve a mirror.

- ``download``: resumable downloads with a disk check; writes ``weights.lock``.
- ``lockfile``: ``weights.lock`` and ``verify`` (re-hash, quarantine what does not match).
- ``mirror``: a loopback/LAN server that speaks the Hub protocol, and ``stage_folder``.
- ``progress``: download progress for terminals and logs.

Imports the base and ``deploy.planning.contract``.
"""
