"""A Jupyter kernel proxy whose ``%restart`` restarts the kernel behind it in place.

Where things live:

- ``kernel``: the kernel-facing proxy; ``%restart`` is handled there.
- ``inner``: the inner kernel's lifecycle (start, ready, stop, death).
- ``prelaunch``: the first inner kernel, launched before the proxy's imports.
- ``relay``: the messages between the client and the inner kernel.
- ``rescue``: dying and hung inner kernels, restarted in place.
- ``app``: the kernel application that binds the client's sockets.
- ``kernelspec``: reading and rewriting kernel.json files.
- ``cli``: ``python -m inplace_restarter list|install|remove|wizard``.
- ``provisioner``, ``serverextension``: Jupyter's own Restart restarts in place.
"""

__version__ = "0.2.0"


def _jupyter_server_extension_points() -> list[dict]:
    """Jupyter server's entry to the extension named ``inplace_restarter``."""
    return [{"module": "inplace_restarter.serverextension"}]
