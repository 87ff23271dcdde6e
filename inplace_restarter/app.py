"""The kernel application: binds the client's sockets as ipykernel does, then proxies."""

from __future__ import annotations

import sys

from ipykernel.kernelapp import IPKernelApp, kernel_aliases, kernel_flags
from traitlets import Any, List, Type, Unicode

from . import kernelspec
from .inner import inner_kernel_spec
from .kernel import ProxyKernel


class ProxyKernelApp(IPKernelApp):
    """``python -m inplace_restarter -f CONNECTION_FILE --resource-dir=SPEC_DIR``."""

    name = "inplace-restarter"
    description = """\
Run as a kernel: relay to the kernel of SPEC_DIR/kernel.json (or the argv
given after '--') and restart it in place on %restart.

To put the proxy in front of your kernelspecs, use the commands instead:
python -m inplace_restarter list|install|remove|wizard --help"""
    subcommands: dict = {}

    kernel_class = Type(ProxyKernel, klass=ProxyKernel)
    # The proxy's own stdout and stderr are its log, not cell output.
    outstream_class = Unicode(None, allow_none=True)

    resource_dir = Unicode(
        "", config=True, help="Folder of the kernel.json whose saved original argv starts the inner kernel."
    )
    inner_argv = List(
        Unicode(),
        config=True,
        help="The inner kernel's argv, overriding the kernel.json's (also given after '--').",
    )

    prelaunched = Any(None, help="(manager, runtime folder) of an inner kernel launched before the app.")

    aliases = {**kernel_aliases, "resource-dir": "ProxyKernelApp.resource_dir"}
    flags = {
        **kernel_flags,
        "standby": ({"ProxyKernel": {"standby": True}}, "Keep a spare kernel started, for a %restart at once."),
    }

    def initialize(self, argv: list[str] | None = None) -> None:
        super().initialize(argv)
        # traitlets filters at the handler; at the logger, every log.debug on
        # the relay path would still build a record.
        self.log.setLevel(self.log_level)
        if self.extra_args:
            self.inner_argv = self.extra_args
        try:
            self.kernel.inner_spec = inner_kernel_spec(self.resource_dir, self.inner_argv)
        except kernelspec.SpecError as e:
            self.log.critical("%s", e)
            self.exit(2)
        if self.prelaunched is not None:
            self.kernel.adopt(*self.prelaunched)

    def init_profile_dir(self) -> None:
        """Also read ``inplace_restarter_config.py`` from the Jupyter config folders."""
        super().init_profile_dir()
        from jupyter_core.paths import jupyter_config_path

        self.config_file_paths[:0] = jupyter_config_path()

    def init_control(self, context) -> None:
        super().init_control(context)
        # Kernel subshells are not forwarded: without the shell channel thread
        # the proxy neither advertises nor half-supports them.
        self.shell_channel_thread = None

def launch(argv: list[str] | None = None, prelaunched=None) -> None:
    ProxyKernelApp.launch_instance(argv if argv is not None else sys.argv[1:], prelaunched=prelaunched)
