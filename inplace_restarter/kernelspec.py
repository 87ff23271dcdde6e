"""Reading and rewriting kernel.json files for the proxy."""

from __future__ import annotations

import json
import sys
from pathlib import Path

#: Key under a spec's ``metadata`` where install keeps what it changed.
METADATA_KEY = "inplace_restarter"
#: Top-level key inplace_restarter 0.1.0 kept the original argv in.
LEGACY_ARGV_KEY = "restarter_original_argv"


class SpecError(Exception):
    """A kernel.json that cannot be used; the message says which and why."""


def proxy_argv(python: str = sys.executable) -> list[str]:
    """The argv that starts the proxy in front of the spec in ``{resource_dir}``."""
    return [python, "-m", "inplace_restarter", "-f", "{connection_file}", "--resource-dir={resource_dir}"]


def read_kernel_json(resource_dir: str | Path) -> dict:
    path = Path(resource_dir) / "kernel.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{path} does not exist") from None
    except (OSError, ValueError) as e:
        raise SpecError(f"{path} is not a readable kernel.json: {e}") from None


def original_argv(spec: dict) -> list[str] | None:
    """The inner kernel's argv saved by install, or None if the spec is not proxied."""
    saved = (spec.get("metadata") or {}).get(METADATA_KEY) or {}
    argv = saved.get("original_argv") or spec.get(LEGACY_ARGV_KEY)
    return list(argv) if argv else None
