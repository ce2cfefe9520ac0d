"""Test-wide settings, set before `deploy` is imported so subprocesses and in-process code both see them
(a test may still point them elsewhere):

- Every `up` records a calibration (deploy/serving/calibration.py): tests keep those records in a folder of
  their own, never in the developer's KIMI_DEPLOY_CACHE.
- KIMI_DEPLOY_DEBUG=1: the CLI's last net (deploy.cli.main) turns an unforeseen exception into one
  "internal error" line; under test that exception keeps its Traceback, so every assertion that a verb
  prints no Traceback fails on a crash instead of passing over it. The net itself is tested with the
  variable unset (tests/test_hostile_input.py::test_an_unforeseen_exception_is_one_line_without_debug).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

if "KIMI_DEPLOY_CALIBRATION_DIR" not in os.environ:
    _dir = tempfile.mkdtemp(prefix="kimi-deploy-test-calibration.")
    os.environ["KIMI_DEPLOY_CALIBRATION_DIR"] = _dir
    atexit.register(shutil.rmtree, _dir, True)

# a crash under test is a Traceback, never the catch-all's one line
os.environ["KIMI_DEPLOY_DEBUG"] = "1"
