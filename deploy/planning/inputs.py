"""What `kimi-deploy plan` reads besides its request: the hardware profile and the calibration store.

    >>> from deploy.planning.inputs import hardware_profile
    >>> hardware_profile(gpus="2x8xH100").name
    '2x8xH100'

The planner itself reads no file (deploy/planning/planner.py); the CLI gets its inputs here and passes them.
"""

from __future__ import annotations

from typing import Any

from deploy.errors import CalibrationError, InputError
from deploy.hardware.profiles import HardwareProfile, load_profile, profile_from_gpus


def hardware_profile(
    hardware: str | None = None, gpus: str | None = None, weights_dir: str | None = None
) -> HardwareProfile:
    """The profile to plan on: a profile file (``hardware``: a path or a name under hardware/), hardware
    described by a GPU spec (``gpus``: ``8xH200``, ``2x8xH100``), or, with neither, this node probed (its
    weights disk: ``weights_dir``). Both at once is InputError."""
    if hardware and gpus:
        raise InputError("give either --hardware FILE or --gpus SPEC, not both")
    if hardware:
        return load_profile(hardware)
    if gpus:
        return profile_from_gpus(gpus)
    try:
        from deploy.hardware import inventory
    except ImportError:
        raise InputError("no hardware given: pass --hardware FILE or --gpus SPEC (e.g. 8xH200)") from None
    return inventory.probe(weights_dir) if weights_dir else inventory.probe()


def calibration_records() -> tuple[list[dict[str, Any]], str | None]:
    """(the calibration store's records, None), or ([], a warning) when the store fails its schema: the
    plan is then made without calibration."""
    from deploy.calibration.store import load_records

    try:
        return load_records(), None
    except CalibrationError as exc:
        return [], f"warning: {exc}; planning without calibration"


__all__ = ["calibration_records", "hardware_profile"]
