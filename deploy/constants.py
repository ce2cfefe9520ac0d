"""Configuration from the environment, in one place.

Every knob the toolkit reads from the environment is defined here; other modules import the value,
never ``os.environ`` directly (tests monkeypatch these or set the variables before import).
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
#: The repository checkout, when running from one (an editable install).
REPO_ROOT = PACKAGE_DIR.parent
#: In a built wheel, the top-level hardware/, templates/ and playbooks/ are copied here (setup.py).
SHIPPED_DIR = PACKAGE_DIR / "_shipped"
#: The data folders: the wheel's copy when installed, else the checkout's.
DATA_ROOT = SHIPPED_DIR if SHIPPED_DIR.is_dir() else REPO_ROOT


def _path_from_env(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else default


#: Cache for heavy one-time builds (llama-server, parser venv, vLLM CPU venv), keyed by pinned version.
CACHE_DIR = _path_from_env("KIMI_DEPLOY_CACHE", Path.home() / ".cache" / "kimi-deploy")
#: Where the install step puts the pinned engines' venvs on a GPU node (render writes, pre-flight reads).
ENGINE_VENV_ROOT = "/opt/kimi-deploy/venvs"
#: The calibration store (measured starts, predicted against measured); `plan` reads it.
CALIBRATION_DIR = _path_from_env("KIMI_DEPLOY_CALIBRATION_DIR", CACHE_DIR / "calibration")
#: Hardware profiles and the GPU spec table.
HARDWARE_DIR = _path_from_env("KIMI_DEPLOY_HARDWARE_DIR", DATA_ROOT / "hardware")
#: Jinja2 templates for launch scripts, env files and systemd units.
TEMPLATES_DIR = _path_from_env("KIMI_DEPLOY_TEMPLATES_DIR", DATA_ROOT / "templates")
#: Ansible playbooks and roles.
PLAYBOOKS_DIR = _path_from_env("KIMI_DEPLOY_PLAYBOOKS_DIR", DATA_ROOT / "playbooks")
#: Model catalog (YAML files, one per model).
CATALOG_DIR = _path_from_env("KIMI_DEPLOY_CATALOG_DIR", PACKAGE_DIR / "catalog")
#: Where runtime state (pidfiles, logs, locks) goes for `up`/`down`.
STATE_DIR = _path_from_env("KIMI_DEPLOY_STATE_DIR", Path.cwd() / ".kimi-deploy")

#: Hugging Face settings, read the way huggingface_hub reads them.
HF_ENDPOINT = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
HF_HUB_OFFLINE = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}

#: Fault injection for tests of the disk check: pretend the download destination has this many bytes free.
_FREE = os.environ.get("KIMI_DEPLOY_FREE_BYTES", "").strip()
FREE_BYTES_OVERRIDE = int(_FREE) if _FREE.isdigit() else None

#: The full context of the Kimi models; a plan below it is `reduced`.
DEFAULT_MODEL = "kimi-k2.5"

GIB = 1024**3
MIB = 1024**2
GB = 1000**3
