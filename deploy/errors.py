"""The toolkit's error hierarchy. Each error carries the exit code the CLI returns for it.

Exit codes: 1 generic failure, 2 bad input, 3 nothing runnable, 4 not enough disk, 5 verification
failed, 6 launch failed, 7 conformance check failed, 8 benchmark missed its SLO (`bench --gate`).
"""

from __future__ import annotations


class KimiDeployError(Exception):
    """Base class: a failure the CLI reports as one line and an exit code, never a traceback."""

    exit_code = 1


class InputError(KimiDeployError):
    """Bad input from the user: unknown name, malformed file, impossible request."""

    exit_code = 2


class ProfileError(InputError):
    """A hardware profile is malformed or incomplete; the message names the file and the key."""


class CatalogError(InputError):
    """A model catalog entry is malformed or unknown."""


class PlanError(InputError):
    """plan.json is missing, malformed, or lacks what a later stage needs."""


class NothingRunnableError(KimiDeployError):
    """The planner found no runnable candidate (the table is still printed)."""

    exit_code = 3


class DiskSpaceError(KimiDeployError):
    """The destination has too little free space; raised before the first byte is fetched."""

    exit_code = 4


class DownloadError(KimiDeployError):
    """A download failed after its retries (network, auth, missing file)."""

    exit_code = 1


class AuthError(DownloadError):
    """401/403 from the Hub or a mirror; the message names the repo and what to set."""

    exit_code = 1


class VerificationError(KimiDeployError):
    """Weights do not match their lockfile (files set aside or missing)."""

    exit_code = 5


class LaunchError(KimiDeployError):
    """The engine did not become ready; the message carries the diagnosed cause."""

    exit_code = 6


class CheckFailedError(KimiDeployError):
    """A required conformance check failed."""

    exit_code = 7


class CalibrationError(InputError):
    """A start-up log that cannot be read as one (empty, binary, truncated, another engine's) or a
    calibration store that fails its schema."""


class SloMissedError(KimiDeployError):
    """`bench --gate`: even the lowest concurrency point misses the SLO (the report is still written)."""

    exit_code = 8
