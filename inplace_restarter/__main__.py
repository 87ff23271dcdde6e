"""``python -m inplace_restarter``: the CLI when given a command, else the kernel.

A kernelspec starts the kernel with options only (``-f {connection_file} ...``),
so a first argument that is not an option is a command.
"""

import importlib.util
import sys
import types


def defer_ipython_init() -> None:
    """Register IPython's package without running its ``__init__`` until used.

    ipykernel's kernel base imports one exception class from
    ``IPython.core.error``, but importing any part of IPython runs the
    package's ``__init__``, which loads IPython's interactive shell.  With
    IPython 9.18 that is 67 modules, 2 MB and 0.04 s of the proxy's 0.26 s
    import of its app (measured interleaved, three pairs each way, with
    ``python -c "import inplace_restarter.app"``; older IPythons also loaded
    prompt_toolkit and jedi, 0.15 s).  Submodules still import as usual; the
    first use of an attribute of the package itself runs the real ``__init__``.
    """
    if "IPython" in sys.modules:
        return
    spec = importlib.util.find_spec("IPython")
    if spec is None or spec.loader is None:
        return
    loader = spec.loader
    package = importlib.util.module_from_spec(spec)

    class Deferred(types.ModuleType):
        def __getattr__(self, name: str):
            self.__class__ = types.ModuleType
            loader.exec_module(self)
            return getattr(self, name)

    package.__class__ = Deferred
    sys.modules["IPython"] = package


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and not argv[0].startswith("-"):
        from .cli import main as cli_main

        sys.exit(cli_main(argv))
    from .prelaunch import prelaunch, split_arguments

    argv, kernel_arguments = split_arguments(argv)
    prelaunched = prelaunch(argv, kernel_arguments)
    defer_ipython_init()
    from .app import launch

    launch(argv, prelaunched, kernel_arguments)


if __name__ == "__main__":
    main()
