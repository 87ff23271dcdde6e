"""``inplace_restarter list|install|remove|wizard``: put the proxy in front of existing kernelspecs.

The proxy rewrites a spec in place instead of adding a second one, so the
kernel list does not double. Only the standard library is imported here at
module level: ``python -m inplace_restarter`` also starts the kernel, which
must stay fast.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

EXIT_FAILED = 1
EXIT_UNKNOWN_NAME = 2


class UnknownName(Exception):
    """A name given on the command line that no kernelspec has."""


@dataclass
class Change:
    """One kernel.json to write, decided before any file is touched."""

    name: str
    resource_dir: Path
    spec: dict
    message: str
    copy_from: Path | None = None


def prog() -> str:
    """How the user called us, so the printed hints can be pasted back."""
    if Path(sys.argv[0]).name.startswith("jupyter-inplace-restarter"):
        return "jupyter inplace-restarter"
    return "python -m inplace_restarter"


def _mark(symbol: str, fallback: str) -> str:
    try:
        symbol.encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return fallback
    return symbol


def lookup(names: list[str]):
    """The entries for ``names`` (deduplicated, in order), or UnknownName listing the misses."""
    from .kernelspec import survey

    entries = {e.name: e for e in survey()}
    wanted = list(dict.fromkeys(n.lower() for n in names))
    missing = [n for n in wanted if n not in entries]
    if missing:
        known = ", ".join(entries) or "none"
        raise UnknownName("; ".join(f"no kernelspec named {n!r}" for n in missing) + f"; known: {known}")
    return [entries[n] for n in wanted]


def user_kernels_dir() -> Path:
    from jupyter_core.paths import jupyter_data_dir

    return Path(jupyter_data_dir()) / "kernels"


def user_copy_wins(resource_dir: Path) -> bool:
    """Whether a copy in the user's kernels folder would be found before ``resource_dir``.

    JUPYTER_PATH (and JUPYTER_PREFER_ENV_PATH) put folders before the user's,
    where a copy would change nothing.
    """
    from jupyter_client.kernelspec import KernelSpecManager

    dirs = [Path(d).resolve() for d in KernelSpecManager().kernel_dirs]
    user, own = user_kernels_dir().resolve(), resource_dir.parent.resolve()
    return own not in dirs or (user in dirs and dirs.index(user) < dirs.index(own))


def plan_install(entry, user: bool = False, outside: bool = False) -> Change:
    """What installing on ``entry`` writes; SpecError says why it cannot."""
    from .kernelspec import INSTALLED, UNKNOWN, SpecError, original_argv, place, wrapped, writable

    where = entry.resource_dir / "kernel.json"
    if not entry.spec:
        raise SpecError(f"{entry.name!r}: {entry.reason}")
    if entry.state == UNKNOWN:
        raise SpecError(f"{entry.name!r} cannot be installed ({entry.reason}): {where}")
    if entry.state == INSTALLED and not entry.legacy:
        raise SpecError(f"{entry.name!r} is already installed: {where}")
    placement = place(original_argv(entry.spec) or entry.spec["argv"], outside)
    target, copy_from = entry.resource_dir, None
    if user and entry.resource_dir.parent.resolve() != user_kernels_dir().resolve():
        target, copy_from = user_kernels_dir() / entry.name, entry.resource_dir
        if target.exists():
            raise SpecError(f"{entry.name!r}: {target} already exists, so the spec cannot be copied there")
        if not user_copy_wins(entry.resource_dir):
            raise SpecError(
                f"{entry.name!r}: a copy in {target.parent} would be hidden by {entry.resource_dir}, which Jupyter searches first"
            )
    elif not writable(target):
        raise SpecError(
            f"{entry.name!r} is in {target}, which you cannot write (a system-wide spec?); "
            f"add --user to install on a copy in {user_kernels_dir()}"
        )
    done = (
        f"migrated {entry.name!r} in {target} from the 0.1.0 form"
        if entry.legacy
        else f"installed {entry.name!r} in {target}"
    )
    message = f"{done}: the proxy runs with {placement.python}, {placement.why}"
    if placement.order:
        message += f"\n  {placement.summary()}"
    return Change(entry.name, target, wrapped(entry.spec, placement, target), message, copy_from)


def plan_remove(entry) -> Change:
    """What removing from ``entry`` writes; SpecError says why it cannot."""
    from .kernelspec import INSTALLED, SpecError, unwrapped, writable

    where = entry.resource_dir / "kernel.json"
    if not entry.spec:
        raise SpecError(f"{entry.name!r}: {entry.reason}")
    if entry.state != INSTALLED:
        raise SpecError(f"{entry.name!r} is not installed: {where}")
    if not writable(entry.resource_dir):
        raise SpecError(f"{entry.name!r} is in {entry.resource_dir}, which you cannot write")
    return Change(
        entry.name,
        entry.resource_dir,
        unwrapped(entry.spec),
        f"removed from {entry.name!r} in {entry.resource_dir}: its argv is restored",
    )


def apply(entries: list, plan: Callable) -> int:
    """Plan every change first and write only if all can be made: a failed command touches no file."""
    from .kernelspec import SpecError, write_kernel_json

    changes, errors = [], []
    for entry in entries:
        try:
            changes.append(plan(entry))
        except SpecError as e:
            errors.append(str(e))
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if errors:
        return EXIT_FAILED
    for change in changes:
        if change.copy_from is not None:
            shutil.copytree(change.copy_from, change.resource_dir)
        write_kernel_json(change.resource_dir, change.spec)
        print(change.message)
    return 0


def cmd_list(args) -> int:
    from .kernelspec import INSTALLABLE, INSTALLED, NO_LAUNCHER, UNKNOWN, summary_of, survey

    entries = survey()
    groups = {state: [e for e in entries if e.state == state] for state in (INSTALLED, INSTALLABLE, UNKNOWN)}
    if args.json:
        data = {
            state: [
                {
                    "name": e.name,
                    "resource_dir": str(e.resource_dir),
                    "reason": e.reason or None,
                    "legacy": e.legacy,
                    "restart": summary_of(e.spec) if e.state != UNKNOWN else None,
                    "restart_button_in_place": restart_button(e)[0],
                }
                for e in group
            ]
            for state, group in groups.items()
        }
        print(json.dumps(data, indent=2))
        return 0
    headings = {
        INSTALLED: ("In place restarting installed on:", _mark("✓", "+"), "remove"),
        INSTALLABLE: ("In place restarting installable on:", "-", "install"),
        UNKNOWN: ("Unknown kernel types, does not know how to install:", _mark("✘", "x"), None),
    }
    for state, (heading, mark, command) in headings.items():
        group = groups[state]
        print(heading)
        if not group:
            print("    (none)")
        width = max((len(repr(e.name)) for e in group), default=0)
        for e in group:
            notes = [f"({e.reason})"] if e.reason else []
            notes += ["(inplace_restarter 0.1.0 form; install migrates it)"] if e.legacy else []
            print(f"  {mark} {repr(e.name):<{width}}  {e.resource_dir}", *notes)
            summary = summary_of(e.spec) if e.state != UNKNOWN else NO_LAUNCHER
            if summary != NO_LAUNCHER:
                print(f"    {' ' * width}  {summary}")
            if state == INSTALLED:
                in_place, why = restart_button(e)
                print(
                    f"    {' ' * width}  Jupyter's Restart button restarts {'in place' if in_place else 'the whole kernel'} ({why})"
                )
        if group and command:
            print(f"  to {command}: {prog()} {command} {' '.join(shlex.quote(e.name) for e in group)}")
    return 0


def restart_button(entry) -> tuple[bool, str]:
    """Whether a Jupyter server of this environment restarts ``entry`` in place, and why (not)."""
    if not entry.spec:
        return False, entry.reason
    from .serverextension import restart_button as of_spec

    return of_spec(entry.spec)


def cmd_install(args) -> int:
    entries = lookup(args.names)
    return apply(entries, lambda entry: plan_install(entry, args.user, args.outside))


def cmd_remove(args) -> int:
    entries = lookup(args.names)
    return apply(entries, plan_remove)


def cmd_wizard(args) -> int:
    from .wizard import run

    return run()


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog=prog(),
        description="Put the in-place restarting proxy in front of the kernels Jupyter already has.",
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("list", help="every kernelspec and whether the proxy is installed on it")
    p.add_argument("--json", action="store_true", help="print the same as JSON, for scripts")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("install", help="start these kernels through the proxy")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument(
        "--user", action="store_true", help="install on a copy in your own kernels folder (for specs you cannot write)"
    )
    p.add_argument(
        "--outside",
        action="store_true",
        help="put the proxy in front of a launcher (srun, ssh, ...) instead of behind it: %%restart then starts "
        "the launcher again, e.g. a new job",
    )
    p.set_defaults(func=cmd_install)
    p = sub.add_parser("remove", help="restore these kernels as they were before install")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(func=cmd_remove)
    p = sub.add_parser("wizard", aliases=["wiz"], help="choose the kernels to proxy in a checkbox dialog")
    p.set_defaults(func=cmd_wizard)
    return top


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (0 done, 1 failed, 2 bad name or usage)."""
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args)
    except UnknownName as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_UNKNOWN_NAME
