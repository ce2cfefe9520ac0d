"""Test-wide settings. Every `up` records a calibration (deploy/serving/calibration.py): tests keep those
records in a folder of their own, never in the developer's KIMI_DEPLOY_CACHE (set before `deploy` is
imported, so subprocesses and in-process code both see it; a test may still point it elsewhere)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

if "KIMI_DEPLOY_CALIBRATION_DIR" not in os.environ:
    _dir = tempfile.mkdtemp(prefix="kimi-deploy-test-calibration.")
    os.environ["KIMI_DEPLOY_CALIBRATION_DIR"] = _dir
    atexit.register(shutil.rmtree, _dir, True)
