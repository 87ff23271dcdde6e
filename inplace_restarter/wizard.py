"""``inplace_restarter wizard``: tick the kernels that should restart in place.

A checkbox per kernel, ticked where the proxy is installed; confirming installs
and removes to match. prompt_toolkit is an optional extra, so it is imported
only when the wizard runs.
"""

from __future__ import annotations

import sys

INSTALL_HINT = 'the wizard needs prompt_toolkit: pip install "inplace_restarter[wizard]"'


def dialog(entries: list):
    """The prompt_toolkit dialog; its ``run()`` gives the ticked names, or None on Cancel."""
    from prompt_toolkit.shortcuts import checkboxlist_dialog

    from .kernelspec import INSTALLED, UNKNOWN

    choices = [e for e in entries if e.state != UNKNOWN]
    unknown = [f"  {e.name}: {e.reason}" for e in entries if e.state == UNKNOWN]
    text = "Ticked kernels restart in place on %restart. Space ticks, Tab moves to OK."
    if unknown:
        text += "\nNot installable:\n" + "\n".join(unknown)
    return checkboxlist_dialog(
        title="inplace_restarter",
        text=text,
        values=[(e.name, f"{e.name}  [{e.state}]  {e.resource_dir}") for e in choices],
        default_values=[e.name for e in choices if e.state == INSTALLED],
    )


def run() -> int:
    """Show the dialog and apply what changed; the exit code of the CLI command."""
    try:
        import prompt_toolkit  # noqa: F401
    except ImportError:
        print(f"error: {INSTALL_HINT}", file=sys.stderr)
        return 1
    from .cli import apply, plan_install, plan_remove
    from .kernelspec import INSTALLABLE, INSTALLED, survey

    entries = survey()
    ticked = dialog(entries).run()
    if ticked is None:
        print("cancelled; nothing changed")
        return 0
    changed = [
        e
        for e in entries
        if (e.state == INSTALLABLE and e.name in ticked) or (e.state == INSTALLED and e.name not in ticked)
    ]
    if not changed:
        print("nothing to change")
        return 0
    return apply(changed, lambda e: plan_install(e) if e.state == INSTALLABLE else plan_remove(e))
