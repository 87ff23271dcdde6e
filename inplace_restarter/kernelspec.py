"""Reading and rewriting kernel.json files for the proxy.

install keeps the spec's argv under ``metadata`` rather than at the top level,
because jupyter_client hands unknown top-level keys to traitlets, which warns
(and says it will raise). remove puts everything back, so a spec round-trips
to the same JSON.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from contextlib import suppress
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

#: Key under a spec's ``metadata`` where install keeps what it changed.
METADATA_KEY = "inplace_restarter"
#: Top-level key inplace_restarter 0.1.0 kept the original argv in.
LEGACY_ARGV_KEY = "restarter_original_argv"
#: Last argv item of a spec rewritten by inplace_restarter 0.1.0.
LEGACY_RESOURCE_ARG = "--Proxy.rd={resource_dir}"
#: Marks a ``metadata`` entry that install created, so remove drops it when emptied.
ADDED_METADATA = "added_metadata"

INSTALLED = "installed"
INSTALLABLE = "installable"
UNKNOWN = "unknown"

# The names jupyter_client replaces with its own sys.executable when launching.
_JUPYTER_PYTHONS = {"python", f"python{sys.version_info[0]}", "python%i.%i" % sys.version_info[:2]}


class SpecError(Exception):
    """A kernel.json that cannot be used; the message says which and why."""


def read_template(name: str) -> dict:
    """A kernel.json template of kernelspec_templates/.

    Installed, the folder is the package ``inplace_restarter.kernelspec_templates``;
    in a source checkout (which shadows an installed copy when Python runs
    there) it is the folder beside the package.
    """
    try:
        folder = files("inplace_restarter.kernelspec_templates")
    except ModuleNotFoundError:
        folder = Path(__file__).resolve().parent.parent / "kernelspec_templates"
    return json.loads(folder.joinpath(name).read_text("utf-8"))


def proxy_argv(python: str = sys.executable) -> list[str]:
    """The argv that starts the proxy in front of the spec in ``{resource_dir}``."""
    return [python if arg == "{python}" else arg for arg in read_template("proxy.json")["argv"]]


def read_kernel_json(resource_dir: str | Path) -> dict:
    path = Path(resource_dir) / "kernel.json"
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{path} does not exist") from None
    except ValueError as e:
        raise SpecError(f"{path} is not valid JSON: {e}") from None
    except OSError as e:
        raise SpecError(f"{path} cannot be read: {e.strerror}") from None
    if not isinstance(spec, dict):
        raise SpecError(f"{path} is not a JSON object")
    return spec


def original_argv(spec: dict) -> list[str] | None:
    """The inner kernel's argv saved by install, or None if the spec is not proxied."""
    saved = (spec.get("metadata") or {}).get(METADATA_KEY) or {}
    argv = saved.get("original_argv") or spec.get(LEGACY_ARGV_KEY)
    return list(argv) if argv else None


def inner_spec_fields(resource_dir: str | Path | None, argv: list[str] | None = None) -> dict:
    """The kernel.json fields of the kernel behind the proxy, as before install.

    ``argv``, when given, replaces the saved original argv.
    """
    spec = read_kernel_json(resource_dir) if resource_dir else {}
    if argv:
        spec = {**spec, "argv": list(argv)}
    elif original_argv(spec):
        spec = unwrapped(spec)
    else:
        where = resource_dir or "no --resource-dir was given, so there"
        raise SpecError(
            f"No inner kernel to start: {where} has no saved original argv; run "
            "'python -m inplace_restarter install NAME' on the spec, or give the argv after '--'"
        )
    spec.pop(LEGACY_ARGV_KEY, None)
    if isinstance(spec.get("metadata"), dict):
        spec["metadata"] = {k: v for k, v in spec["metadata"].items() if k != METADATA_KEY}
    return spec


def is_legacy(spec: dict) -> bool:
    """Whether inplace_restarter 0.1.0 rewrote this spec (install migrates it)."""
    argv = spec.get("argv")
    return LEGACY_ARGV_KEY in spec or (isinstance(argv, list) and argv[-1:] == [LEGACY_RESOURCE_ARG])


def _runs_proxy(argv: list[str]) -> bool:
    return "inplace_restarter" in argv[1:3] or argv[-1:] == [LEGACY_RESOURCE_ARG]


def state_of(spec: dict) -> tuple[str, str]:
    """(INSTALLED | INSTALLABLE | UNKNOWN, why it is unknown)."""
    argv = spec.get("argv")
    if not argv:
        return UNKNOWN, "kernel.json has no argv"
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        return UNKNOWN, "argv is not a list of strings"
    if original_argv(spec) is not None:
        return INSTALLED, ""
    if _runs_proxy(argv):
        return UNKNOWN, "argv runs inplace_restarter but the original argv is not saved"
    if not any("{connection_file}" in a for a in argv):
        return UNKNOWN, "argv has no {connection_file}"
    return INSTALLABLE, ""


@dataclass
class Entry:
    """One kernelspec Jupyter can see, with what install/remove would do to it."""

    name: str
    resource_dir: Path
    state: str
    reason: str = ""
    spec: dict = field(default_factory=dict, repr=False)

    @property
    def legacy(self) -> bool:
        return is_legacy(self.spec)


def find_specs() -> dict[str, Path]:
    """Every kernelspec name and folder, the one Jupyter would use for each name."""
    from jupyter_client.kernelspec import KernelSpecManager

    return {name: Path(d) for name, d in sorted(KernelSpecManager().find_kernel_specs().items())}


def survey() -> list[Entry]:
    """Every kernelspec with its state; unreadable ones are UNKNOWN with the reason."""
    entries = []
    for name, resource_dir in find_specs().items():
        try:
            spec = read_kernel_json(resource_dir)
        except SpecError as e:
            entries.append(Entry(name, resource_dir, UNKNOWN, str(e)))
            continue
        entries.append(Entry(name, resource_dir, *state_of(spec), spec=spec))
    return entries


def wrapped(spec: dict, python: str) -> dict:
    """A copy of ``spec`` started through the proxy; a 0.1.0 spec is migrated, none is wrapped twice."""
    new = unwrapped(spec) if original_argv(spec) else copy.deepcopy(spec)
    saved: dict = {"original_argv": list(new["argv"])}
    if "metadata" not in new:
        new["metadata"] = {}
        saved[ADDED_METADATA] = True
    elif not isinstance(new["metadata"], dict):
        raise SpecError("its metadata is not a JSON object")
    new["metadata"][METADATA_KEY] = saved
    new["argv"] = proxy_argv(python)
    return new


def unwrapped(spec: dict) -> dict:
    """A copy of ``spec`` as it was before install: same JSON, nothing of ours left."""
    inner = original_argv(spec)
    if inner is None:
        raise SpecError("it is not installed")
    new = copy.deepcopy(spec)
    new["argv"] = inner
    new.pop(LEGACY_ARGV_KEY, None)
    metadata = new.get("metadata")
    if isinstance(metadata, dict) and METADATA_KEY in metadata:
        saved = metadata.pop(METADATA_KEY)
        if saved.get(ADDED_METADATA) and not metadata:
            del new["metadata"]
    return new


def _can_import_proxy(python: str) -> bool:
    try:
        done = subprocess.run(
            [python, "-c", "import inplace_restarter.app"], capture_output=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def choose_python(inner_argv: list[str]) -> tuple[str, str]:
    """The Python to run the proxy with, and why: the spec's own if it can, else ours.

    The spec's own interpreter is preferred because it is the one its owner
    chose for this kernel (and the one that will still exist when the
    environment running ``install`` is gone).
    """
    command = inner_argv[0]
    if not re.fullmatch(r"python[0-9.]*(\.exe)?", Path(command).name, re.IGNORECASE):
        return sys.executable, f"the Python running install: the kernel is started by {command}, not Python"
    resolved = sys.executable if command in _JUPYTER_PYTHONS else shutil.which(command)
    if resolved and _can_import_proxy(resolved):
        return command, "the spec's own Python, which can import inplace_restarter"
    return sys.executable, f"the Python running install: the spec's Python {command} cannot import inplace_restarter"


def writable(folder: Path) -> bool:
    """Whether kernel.json in ``folder`` can be replaced (a temporary file created there)."""
    return os.access(folder, os.W_OK | os.X_OK)


def write_kernel_json(resource_dir: str | Path, spec: dict) -> None:
    """Replace kernel.json atomically, keeping its permission bits.

    A temporary file in the same folder renamed over the old one means a
    reader (or an interrupted install) sees either the old spec or the new one.
    """
    path = Path(resource_dir) / "kernel.json"
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".kernel.json.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(spec, f, indent=1, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
