"""Where downloads are cached and where run state (PIDs, ports, settings) is kept."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def cache_dir() -> Path:
    """Return the download cache, shared by every checkout on the machine.

    Kept outside git so that a fresh clone reuses what an earlier run fetched.
    """
    explicit = os.environ.get("FLOWCRAFT_CACHE")
    base = Path(explicit) if explicit else Path.home() / ".cache" / "flowcraft"
    base.mkdir(parents=True, exist_ok=True)
    return base


def repo_root() -> Path | None:
    """Return the monorepo root, found from the working directory or this file."""
    for start in (Path.cwd(), _PACKAGE_DIR):
        for candidate in (start, *start.parents):
            if (candidate / "contract-tests" / "services").is_dir():
                return candidate
    return None


def state_dir() -> Path:
    """Return the run-state directory, so that `up` and `down` can run in different processes.

    It lives in the repository's git-ignored `.cache/` so that each checkout has its own
    servers; outside a checkout it falls back to the download cache.
    """
    explicit = os.environ.get("FLOWCRAFT_SERVICES_STATE")
    if explicit:
        path = Path(explicit)
    else:
        root = repo_root()
        path = (root / ".cache" if root else cache_dir()) / "flowcraft-services"
    path.mkdir(parents=True, exist_ok=True)
    return path
