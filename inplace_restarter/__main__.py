"""``python -m inplace_restarter``: the CLI when given a command, else the kernel.

A kernelspec starts the kernel with options only (``-f {connection_file} ...``),
so a first argument that is not an option is a command.
"""

import sys


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and not argv[0].startswith("-"):
        from .cli import main as cli_main

        sys.exit(cli_main(argv))
    from .inner import prelaunch

    prelaunched = prelaunch(argv)
    from .app import launch

    launch(argv, prelaunched)


if __name__ == "__main__":
    main()
