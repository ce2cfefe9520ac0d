"""The toolkit's error hierarchy, all in this file. Each error carries the exit code the CLI returns for it.

Exit codes: 1 generic failure, 2 bad input, 3 nothing runnable, 4 not enough disk, 5 verification
failed, 6 launch failed, 7 conformance check failed, 8 benchmark missed its SLO (`bench --gate`), 9 pre-flight
failed (`preflight`: a node, driver or the fabric is not ready).
Three errors take the code of their cause (``AnsibleRunError``, ``DemoStepFailed``, ``UpgradeFailed``).

Every subclass of ``KimiDeployError`` is defined here (the stages import them from here) but the ones in
``DEFINED_ELSEWHERE``, listed with their exit codes; tests/test_layout.py checks both.
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


class PreflightFailed(KimiDeployError):
    """`preflight`: at least one check failed (the table or JSON of every check is still printed)."""

    exit_code = 9


# ------------------------------------------------------------------------- by stage, in pipeline order


class NotReadable(InputError, OSError):
    """Not a regular file (directory, FIFO, device), unreadable, or too large: bad input (exit 2), and an
    OSError for readers that treat an unreadable file as absent (deploy.fsutil)."""


class NotJson(InputError, ValueError):
    """Binary, too deeply nested or otherwise not JSON: bad input (exit 2), and a ValueError for readers
    that already handle ``json.JSONDecodeError`` (deploy.fsutil)."""


class PromtoolError(KimiDeployError):
    """promtool rejected a rendered monitoring file."""

    exit_code = 1


class PrometheusError(KimiDeployError):
    """The local Prometheus did not start, or its API answered with an error."""

    exit_code = 1


class RenderError(KimiDeployError):
    """A template could not be rendered (a value the template needs is missing)."""

    exit_code = 1


class ParserCheckFailed(KimiDeployError):
    """A rendered command did not pass its engine's own argument parser (`render`)."""

    exit_code = 1


class RouterArgsRejected(ParserCheckFailed):
    """A router command did not pass the pinned router's own parser (deploy.routers.check): one line with
    the router's version and its own message."""


class RouterRequestError(KimiDeployError):
    """A running router did not answer, or refused a request (deploy.routers.client): status and text."""

    exit_code = 1


class BudgetExhausted(KimiDeployError):
    """The run's request budget (--max-requests) is spent; the request was not sent."""

    exit_code = 7


class RateLimited(KimiDeployError):
    """A 429 the run would not (or could no longer) wait out."""

    exit_code = 7


class TokenizerExportError(KimiDeployError):
    """Exporting a GGUF's tokenizer failed; the message names the file and the log."""

    exit_code = 1


class ExportError(KimiDeployError):
    """AIPerf's export is missing, malformed, or in a schema version this toolkit does not know."""

    exit_code = 1


class AiperfRunError(KimiDeployError):
    """AIPerf exited without a usable export; the message names its log."""

    exit_code = 1


class UpgradeBusy(KimiDeployError):
    """Another `upgrade`/`rollback` holds the state dir's lock."""

    exit_code = 1


class UpgradeFailed(KimiDeployError):
    """The upgrade (or rollback) failed; the exit code is the cause's (5 weights, 6 start, 7 check, ...)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        self.exit_code = exit_code or 1
        super().__init__(message)


class GateFailed(CheckFailedError):
    """The new release started but did not pass the gate (check or bench)."""


class DemoStepFailed(KimiDeployError):
    """A demo stage failed; the exit code is that stage's own (5 verify, 6 up, 7 check, ...)."""

    def __init__(self, step: str, exit_code: int, detail: str = "") -> None:
        self.exit_code = exit_code or 1
        super().__init__(f"demo stopped at `{step}` (exit {exit_code}){': ' + detail if detail else ''}")


class DemoModelError(KimiDeployError):
    """Producing the demo's HF checkpoint failed; the message names the step and the log."""

    exit_code = 1


class AnsibleMissing(KimiDeployError):
    """`kimi-deploy ansible` without the optional ``ansible`` extra: one line saying what to install."""

    exit_code = 2


class AnsibleRunError(KimiDeployError):
    """The playbook failed; the exit code is ansible-playbook's own (2 failed hosts, 4 unreachable)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code if exit_code > 0 else 1


#: Errors defined in their stage's module, with their exit codes: deploy/engines/ keeps the engine-install
#: error its builds raise, and the two "a venv is missing" errors subclass it.
DEFINED_ELSEWHERE: dict[str, int] = {
    "deploy.engines.builds.EngineInstallError": 1,
    "deploy.benchmark.install.AiperfMissingError": 1,
    "deploy.routers.install.RouterMissingError": 1,
    "deploy.serving.parser_check.ParserVenvMissing": 1,
}
