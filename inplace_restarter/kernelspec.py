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

from . import launchers as launchers_

#: Key under a spec's ``metadata`` where install keeps what it changed.
METADATA_KEY = "inplace_restarter"
#: Top-level key inplace_restarter 0.1.0 kept the original argv in.
LEGACY_ARGV_KEY = "restarter_original_argv"
#: Last argv item of a spec rewritten by inplace_restarter 0.1.0.
LEGACY_RESOURCE_ARG = "--Proxy.rd={resource_dir}"
#: Marks a ``metadata`` entry that install created, so remove drops it when emptied.
ADDED_METADATA = "added_metadata"

#: The proxy runs where the kernel runs, behind the launchers, or in front of them.
INSIDE, OUTSIDE = "inside", "outside"

#: restart_summary of a spec without launchers, which list does not repeat under each spec
NO_LAUNCHER = "the proxy starts the kernel itself: %restart restarts the kernel process"

INSTALLED = "installed"
INSTALLABLE = "installable"
UNKNOWN = "unknown"

# The names jupyter_client replaces with its own sys.executable when launching.
_JUPYTER_PYTHONS = {"python", f"python{sys.version_info[0]}", f"python{sys.version_info[0]}.{sys.version_info[1]}"}


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


def _saved(spec: dict) -> dict:
    """What install kept under the spec's metadata."""
    metadata = spec.get("metadata")
    return (metadata.get(METADATA_KEY) or {}) if isinstance(metadata, dict) else {}


def original_argv(spec: dict) -> list[str] | None:
    """The spec's argv before install, or None if the spec is not proxied."""
    argv = _saved(spec).get("original_argv") or spec.get(LEGACY_ARGV_KEY)
    return list(argv) if argv else None


def inner_spec_fields(resource_dir: str | Path | None, argv: list[str] | None = None, extra: list[str] = ()) -> dict:
    """The kernel.json fields of the kernel behind the proxy, as before install.

    ``argv``, when given, replaces the saved original argv; ``extra`` (see
    split_arguments) goes after it, as jupyter_client puts a client's.
    """
    spec = read_kernel_json(resource_dir) if resource_dir else {}
    if argv:
        spec = {**spec, "argv": list(argv)}
    elif original_argv(spec):
        saved = _saved(spec)
        spec = unwrapped(spec)
        spec["argv"] = list(saved.get("inner_argv") or spec["argv"])
        if saved.get("inner_interrupt_mode"):
            spec["interrupt_mode"] = saved["inner_interrupt_mode"]
    else:
        where = resource_dir or "no --resource-dir was given, so there"
        raise SpecError(
            f"No inner kernel to start: {where} has no saved original argv; run "
            "'python -m inplace_restarter install NAME' on the spec, or give the argv after '--'"
        )
    spec["argv"] = [*spec["argv"], *extra]
    spec.pop(LEGACY_ARGV_KEY, None)
    if isinstance(spec.get("metadata"), dict):
        spec["metadata"] = {k: v for k, v in spec["metadata"].items() if k != METADATA_KEY}
    return spec


def proxy_arguments(spec_argv: list[str]) -> list[str] | None:
    """What a kernel.json's argv gives the proxy (after ``-m inplace_restarter``), templates unfilled; None if no proxy."""
    for index in range(len(spec_argv) - 1):
        if spec_argv[index : index + 2] == ["-m", "inplace_restarter"]:
            return spec_argv[index + 2 :]
    return None


def split_arguments(argv: list[str], spec_argv: list[str]) -> tuple[list[str], list[str]]:
    """The proxy's own arguments, and those jupyter_client appended after the spec's for the kernel.

    jupyter_client starts a kernel with the spec's argv followed by the
    ``extra_arguments`` a client gives (``--profile-dir DIR``, say). The
    proxy's own arguments are the ones ``spec_argv`` (its kernel.json's argv)
    gives it, ``{connection_file}`` and other templates filled in, and any
    arguments in front of them; everything after them is the kernel's.
    A spec that does not run the proxy, or does not match, leaves all ``argv`` the proxy's.
    """
    written = proxy_arguments(spec_argv)
    if not written:
        return argv, []
    patterns = [
        re.compile(".*".join(re.escape(part) for part in re.split(r"\{[A-Za-z0-9_]+\}", arg)), re.DOTALL)
        for arg in written
    ]
    for start in range(len(argv) - len(patterns) + 1):
        end = start + len(patterns)
        if all(pattern.fullmatch(arg) for pattern, arg in zip(patterns, argv[start:end], strict=True)):
            return argv[:end], argv[end:]
    return argv, []


def is_legacy(spec: dict) -> bool:
    """Whether inplace_restarter 0.1.0 rewrote this spec (install migrates it)."""
    argv = spec.get("argv")
    return LEGACY_ARGV_KEY in spec or (isinstance(argv, list) and argv[-1:] == [LEGACY_RESOURCE_ARG])


def _runs_proxy(argv: list[str]) -> bool:
    return launchers_.runs_proxy(argv) or argv[-1:] == [LEGACY_RESOURCE_ARG]


def restart_summary(order: str, launchers: list[str]) -> str:
    """One line: where the proxy runs and what ``%restart`` then does."""
    known = [launchers_.LAUNCHERS.get(name) or launchers_.REMOTE_IKERNEL for name in launchers]
    names = " and ".join(launchers)
    if not known:
        return NO_LAUNCHER
    holds = {"job": "the job", "login": "the login", "container": "the container"}
    if order == INSIDE:
        kept = " and ".join(dict.fromkeys(holds[launcher.holds] for launcher in known))
        return f"the proxy runs inside {names}: %restart restarts only the kernel and keeps {kept}"
    fresh = {"job": "a new job", "login": "a new login", "container": "a new container"}
    again = " and ".join(dict.fromkeys(fresh[launcher.holds] for launcher in known))
    return f"the proxy runs outside {names}: %restart starts {names} again ({again})"


def summary_of(spec: dict) -> str:
    """restart_summary for a spec: as installed, as written by hand, or as install would put it."""
    saved, argv = _saved(spec), spec.get("argv") or []
    if original_argv(spec) is not None:
        found = [launcher.name for launcher in launchers_.parse(original_argv(spec)).launchers]
        return restart_summary(saved.get("order") or OUTSIDE, saved.get("launchers", found))
    launch = launchers_.parse(argv)
    return restart_summary(INSIDE, [launcher.name for launcher in launch.launchers])


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
        return UNKNOWN, "argv runs inplace_restarter but the original argv is not saved, so it is not wrapped again"
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


@dataclass
class Placement:
    """Where install puts the proxy in a spec's argv, and with which Python."""

    #: the launchers left in front of the proxy (none when it runs outside)
    launch: launchers_.Launch
    #: what the proxy starts: the kernel's command, or the whole argv when outside
    inner_argv: list[str]
    python: str
    why: str
    order: str
    #: every launcher in the spec's argv, in front of the proxy or not
    launchers: list[str]

    @property
    def interrupt_by_message(self) -> bool:
        """Whether a launcher in front of the proxy would not pass SIGINT on to it."""
        return any(not launcher.passes_sigint for launcher in self.launch.launchers)

    @property
    def inner_interrupt_by_message(self) -> bool:
        """Whether a launcher the proxy starts would not pass its SIGINT on to the kernel."""
        return any(not launcher.passes_sigint for launcher in launchers_.parse(self.inner_argv).launchers)

    def summary(self) -> str:
        return restart_summary(self.order, self.launchers)


def place(argv: list[str], outside: bool = False, python: str | None = None) -> Placement:
    """Inside the launchers (unless ``outside``), as deep as a Python that can import the proxy runs.

    A container whose Python cannot import inplace_restarter gets the proxy
    just in front of it, still inside the job launchers around it.
    """
    launch = launchers_.parse(argv)
    names = [launcher.name for launcher in launch.launchers]
    if outside or not launch.launchers:
        chosen, why = (python, "as given") if python else choose_python(argv)
        return Placement(launchers_.Launch(argv, kernel=argv), argv, chosen, why, OUTSIDE if names else "", names)
    if python:
        return Placement(launch, launch.kernel, python, "as given", INSIDE, names)
    containers = [i for i, launcher in enumerate(launch.launchers) if launcher.is_container]
    through = launch.split_at(containers[0]).kernel[: -len(launch.kernel)] if containers else []
    chosen, why = choose_python(launch.kernel, through, launched=True)
    if containers and chosen != launch.kernel[0]:
        launch = launch.split_at(containers[0])
        why += f"; so it runs in front of {launch.kernel[0]}"
    else:
        why += f" (checked here: the same path must work where {launch.describe()} runs it)"
    return Placement(launch, launch.kernel, chosen, why, INSIDE, names)


def wrapped(spec: dict, where: str | Placement, resource_dir: str | Path | None = None) -> dict:
    """A copy of ``spec`` started through the proxy; a 0.1.0 spec is migrated, none is wrapped twice.

    ``where`` is a Placement or the Python to run the proxy with (inside
    any launchers). ``resource_dir`` is needed where ``{resource_dir}`` is
    not filled in: in remote_ikernel's kernel command.
    """
    new = unwrapped(spec) if original_argv(spec) else copy.deepcopy(spec)
    placement = where if isinstance(where, Placement) else place(new["argv"], python=where)
    saved: dict = {"original_argv": list(new["argv"])}
    if "metadata" not in new:
        new["metadata"] = {}
        saved[ADDED_METADATA] = True
    elif not isinstance(new["metadata"], dict):
        raise SpecError("its metadata is not a JSON object")
    proxy = proxy_argv(placement.python)
    if placement.order:
        saved.update(order=placement.order, launchers=placement.launchers)
    if placement.order == INSIDE:
        saved["inner_argv"] = placement.inner_argv
        if placement.launch.kernel_cmd_index is not None:
            if resource_dir is None:
                raise SpecError("remote_ikernel does not fill in {resource_dir}: the spec's folder is needed")
            proxy[-1] = f"--resource-dir={Path(resource_dir).absolute()}"
        if placement.interrupt_by_message and new.get("interrupt_mode") != "message":
            saved["original_interrupt_mode"] = new.get("interrupt_mode")
            new["interrupt_mode"] = "message"
    elif placement.inner_interrupt_by_message and new.get("interrupt_mode", "signal") == "signal":
        saved["inner_interrupt_mode"] = "message"
    new["metadata"][METADATA_KEY] = saved
    new["argv"] = placement.launch.around(proxy)
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
        if "original_interrupt_mode" in saved:
            if saved["original_interrupt_mode"] is None:
                new.pop("interrupt_mode", None)
            else:
                new["interrupt_mode"] = saved["original_interrupt_mode"]
        if saved.get(ADDED_METADATA) and not metadata:
            del new["metadata"]
    return new


def _can_import_proxy(python: str, through: list[str] = ()) -> bool:
    try:
        done = subprocess.run(
            [*through, python, "-c", "import inplace_restarter.app"], capture_output=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def choose_python(inner_argv: list[str], through: list[str] = (), launched: bool = False) -> tuple[str, str]:
    """The Python to run the proxy with, and why: the spec's own if it can, else ours.

    The spec's own interpreter is preferred because it is the one its owner
    chose for this kernel (and the one that will still exist when the
    environment running ``install`` is gone). ``through`` is a container
    runner's prefix the check runs in, as the kernel will; ``launched`` says
    that a launcher, not jupyter_client, finds the command on PATH.
    """
    command = inner_argv[0]
    if not re.fullmatch(r"python[0-9.]*(\.exe)?", Path(command).name, re.IGNORECASE):
        return sys.executable, f"the Python running install: the kernel is started by {command}, not Python"
    if through:
        resolved = command
    elif command in _JUPYTER_PYTHONS and not launched:
        resolved = sys.executable
    else:
        resolved = shutil.which(command)
    if resolved and _can_import_proxy(resolved, through):
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
